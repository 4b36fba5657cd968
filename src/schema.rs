//! The hand-written SQL in `sql/`, in install order: tables need the Rust functions behind their
//! defaults, checks and triggers; the entity and API functions need the tables.

pgrx::extension_sql_file!(
    "../sql/schema.sql",
    name = "schema",
    requires = [
        api::expand_subscription,
        api::check_webhook_url,
        api::generate_token,
        api::generate_signing_secret,
        api::event_catalog,
        api::is_event_type,
        emit::record_change,
        emit::capture_deleted_entity,
        emit::note_webhooks_changed,
    ]
);

pgrx::extension_sql_file!("../sql/entities.sql", name = "entities", requires = ["schema"]);

pgrx::extension_sql_file!(
    "../sql/api.sql",
    name = "api",
    requires = ["entities", api::check_endpoint, api::redact_url]
);

pgrx::extension_sql_file!(
    "../sql/delivery.sql",
    name = "delivery",
    requires = ["api", api::wake_worker_at_commit, api::worker_status, api::delivery_key]
);

pgrx::extension_sql_file!(
    "../sql/scheduler.sql",
    name = "scheduler",
    requires = ["delivery", api::emit_event]
);
