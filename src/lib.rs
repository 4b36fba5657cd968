//! billhook: an invoicing schema whose committed changes become webhook events, delivered from
//! inside PostgreSQL.

mod api;
mod catalog;
mod changes;
mod credentials;
mod emit;
mod error;
mod idempotency;
mod outbox;
mod plans;
mod schema;
mod target;
mod envelope;
mod gucs;
mod http;
mod retry;
mod sign;
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
