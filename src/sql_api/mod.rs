//! The SQL functions written in Rust, by concern; the webhook management functions themselves are
//! SQL (`sql/api.sql`), and `manifest` orders the hand-written SQL of `sql/` around these.

mod catalog;
mod events;
mod manifest;
mod webhooks;
mod worker;
