//! The hand-written SQL in `sql/`, in install order, with the Rust functions each file needs:
//! tables need the Rust functions behind their defaults, checks and triggers; the entity and API
//! functions need the tables.

pgrx::extension_sql_file!(
    "../../sql/schema.sql",
    name = "schema",
    requires = [
        event_catalog::expand_subscription,
        event_catalog::expand_format_subscription,
        event_catalog::exact_subscription,
        event_catalog::moneybird_catalog,
        webhooks::check_webhook_url,
        webhooks::check_webhook_headers,
        webhooks::check_webhook_settings,
        webhooks::check_webhook_choice,
        webhooks::generate_token,
        events::detoasted_size,
        webhooks::generate_signing_secret,
        webhooks::generate_signing_key,
        webhooks::ed25519_public_key,
        event_catalog::event_catalog,
        event_catalog::event_schema,
        event_catalog::event_tables,
        event_catalog::is_event_type,
        event_catalog::check_event_type,
        committing::emit::record_change,
        committing::emit::capture_deleted_entity,
        committing::emit::note_webhooks_changed,
    ]
);

pgrx::extension_sql_file!("../../sql/partitions.sql", name = "partitions", requires = ["schema"]);

pgrx::extension_sql_file!("../../sql/entities.sql", name = "entities", requires = ["partitions"]);

pgrx::extension_sql_file!(
    "../../sql/api.sql",
    name = "api",
    requires = ["entities", webhooks::verify_endpoint, webhooks::redact_url]
);

pgrx::extension_sql_file!(
    "../../sql/delivery.sql",
    name = "delivery",
    requires = [
        "api",
        events::wake_worker_at_commit,
        worker_status::worker_status,
        worker_status::workers,
        events::delivery_key,
        event_catalog::moneybird_event
    ]
);

pgrx::extension_sql_file!("../../sql/scheduler.sql", name = "scheduler", requires = ["delivery", events::emit_event]);

pgrx::extension_sql_file!("../../sql/reporting.sql", name = "reporting", requires = ["scheduler"]);

pgrx::extension_sql_file!(
    "../../sql/tracking.sql",
    name = "tracking",
    requires = ["reporting", committing::emit::record_tracked_change, committing::emit::capture_deleted_tracked_row]
);

pgrx::extension_sql_file!("../../sql/tenancy.sql", name = "tenancy", requires = ["tracking"]);

pgrx::extension_sql_file!(
    "../../sql/restore.sql",
    name = "restore",
    requires = ["tenancy", restore::hold_back_workers]
);

pgrx::extension_sql_file!("../../sql/comments.sql", name = "comments", finalize);
