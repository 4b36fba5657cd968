//! billhook: an invoicing schema whose committed changes become webhook events, delivered from
//! inside PostgreSQL.

mod api;
mod catalog;
mod changes;
mod credentials;
mod emit;
mod error;
mod schema;
mod target;

pgrx::pg_module_magic!();

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    emit::register_transaction_callbacks();
}
