//! billhook: an invoicing schema whose committed changes become webhook events, delivered from
//! inside PostgreSQL.
//!
//! Committing side: `emit` (triggers) → `changes` (what changed, per transaction) → `outbox`
//! (events written at commit). Delivering side: `worker` (the background worker) → `http` (sender
//! threads). Pure rules with plain unit tests: `catalog`, `changes`, `credentials`, `envelope`, `headers`, `idempotency`,
//! `metrics`, `moneybird`, `rate_limit`, `retry`, `sign`, `target`, `webhook_settings`. SQL surface: `functions` (Rust functions) and `sql_manifest` (the
//! files of `sql/`, in install order).

mod catalog;
mod changes;
mod credentials;
mod emit;
mod envelope;
mod error;
mod functions;
mod gucs;
mod headers;
mod http;
mod idempotency;
mod jsonb;
mod metrics;
mod moneybird;
mod outbox;
mod pg_time;
mod plans;
mod rate_limit;
mod retry;
mod schemas;
mod sign;
mod sql_manifest;
mod target;
mod webhook_settings;
mod worker;

use pgrx::pg_sys;

pgrx::pg_module_magic!();

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::define();
    emit::register_transaction_callbacks();
    // The worker and its shared memory exist only when the postmaster loads billhook; loaded later
    // by a backend, billhook records events and the worker of a preloading server sends them.
    if unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        worker::register_in_postmaster();
    }
}
