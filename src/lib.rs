//! billhook: an invoicing schema whose committed changes become webhook events, delivered from
//! inside PostgreSQL. The tree follows the two pipelines (docs/architecture.md draws them):
//!
//! - `committing`: a row change becomes an event in the outbox, at commit, in the committing
//!   session: `emit` (triggers and the commit hook) → `changes` (the transaction's net effect) →
//!   `outbox` (the writes).
//! - `delivering`: the background worker (`worker`) fans events out into deliveries, claims them,
//!   hands each `push` to the sender threads (`senders`), which send it with `http_client`, and
//!   records the outcomes; the rules it applies (`retry`, `rate_limit`, `webhook_settings`,
//!   `url_policy`, `metrics`) are pure.
//! - `catalog`: what events exist, who subscribes to which (`subscriptions`), Moneybird's names
//!   for them (`moneybird_names`), and the JSON Schema of each push (`push_schemas`). Both
//!   pipelines read it.
//! - `sql_api`: the SQL functions written in Rust, by concern, and the install order of the
//!   hand-written SQL in `sql/` (`manifest`).
//! - Shared: `error` (every error with its SQLSTATE), `gucs` (every setting), `plans` (kept
//!   plans), `restore` (the lock by which a restore holds the workers back), `jsonb` and `pg_time`
//!   (reading Postgres values).

mod catalog;
mod committing;
mod delivering;
mod error;
mod gucs;
mod jsonb;
mod pg_time;
mod plans;
mod restore;
mod sql_api;

use pgrx::pg_sys;

pgrx::pg_module_magic!();

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::define();
    committing::emit::register_transaction_callbacks();
    // The worker and its shared memory exist only when the postmaster loads billhook; loaded later
    // by a backend, billhook records events and the worker of a preloading server sends them.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        delivering::worker::register_in_postmaster();
    }
}
