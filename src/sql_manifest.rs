//! The hand-written SQL in `sql/`, in install order: tables need the Rust functions behind their
//! defaults, checks and triggers; the entity and API functions need the tables.

pgrx::extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [
        functions::expand_subscription,
        functions::expand_format_subscription,
        functions::exact_subscription,
        functions::moneybird_catalog,
        functions::check_webhook_url,
        functions::check_webhook_headers,
        functions::check_webhook_settings,
        functions::check_webhook_choice,
        functions::generate_token,
        functions::detoasted_size,
        functions::generate_signing_secret,
        functions::generate_signing_key,
        functions::ed25519_public_key,
        functions::event_catalog,
        functions::event_schema,
        functions::event_tables,
        functions::is_event_type,
        functions::check_event_type,
        emit::record_change,
        emit::capture_deleted_entity,
        emit::note_webhooks_changed,
    ]
);

pgrx::extension_sql_file!("../sql/entities.sql", name = "entities", requires = ["schema"]);

pgrx::extension_sql_file!(
    "../sql/api.sql",
    name = "api",
    requires = ["entities", functions::verify_endpoint, functions::redact_url]
);

pgrx::extension_sql_file!(
    "../sql/delivery.sql",
    name = "delivery",
    requires = [
        "api",
        functions::wake_worker_at_commit,
        functions::worker_status,
        functions::workers,
        functions::delivery_key,
        functions::moneybird_event
    ]
);

pgrx::extension_sql_file!("../sql/scheduler.sql", name = "scheduler", requires = ["delivery", functions::emit_event]);

pgrx::extension_sql_file!("../sql/reporting.sql", name = "reporting", requires = ["scheduler"]);

pgrx::extension_sql_file!(
    "../sql/tracking.sql",
    name = "tracking",
    requires = ["reporting", emit::record_tracked_change, emit::capture_deleted_tracked_row]
);

pgrx::extension_sql_file!("../sql/tenancy.sql", name = "tenancy", requires = ["tracking"]);

pgrx::extension_sql_file!("../sql/comments.sql", name = "comments", finalize);
