//! The SQL functions written in Rust, by concern; the webhook management functions themselves are
//! SQL (`sql/api.sql`), and `manifest` orders the hand-written SQL of `sql/` around these. The
//! modules are named unlike `crate::catalog` and `delivering::worker`: pgrx resolves a `requires`
//! path by the function's name and the end of its module path, so a function of the same name
//! added there could otherwise be taken for one of these.

mod event_catalog;
mod events;
mod manifest;
mod webhooks;
mod worker_status;
