//! SQL functions implemented in Rust. The webhook management functions themselves are SQL
//! (`sql/api.sql`); these are the rules they and the tables' constraints rely on.

use pgrx::prelude::*;

use crate::catalog::{self, EVENTS};
use crate::credentials;
use crate::error::{BillhookError, OrReport};
use crate::target;

/// The exact event names a webhook with these `enabled_events` receives. Raises 22023 naming the
/// first unknown entry. Backs the generated column `webhooks.subscribed_events`, so every way of
/// writing a webhook is validated the same way.
#[pg_extern(immutable, parallel_safe)]
fn expand_subscription(enabled_events: Vec<Option<String>>) -> Vec<&'static str> {
    let entries: Vec<String> = enabled_events
        .into_iter()
        .map(|e| e.ok_or_else(|| BillhookError::UnknownEvent("NULL".to_string())))
        .collect::<Result<_, _>>()
        .or_report();
    catalog::expand_subscription(&entries).or_report()
}

/// True for a URL billhook can deliver to; raises 22023 naming the URL and the reason otherwise.
#[pg_extern(immutable, parallel_safe)]
fn check_webhook_url(url: &str) -> bool {
    target::validate_url(url).or_report();
    true
}

#[pg_extern(volatile, parallel_safe)]
fn generate_token() -> String {
    credentials::new_token()
}

#[pg_extern(volatile, parallel_safe)]
fn generate_signing_secret() -> String {
    credentials::new_signing_secret()
}

/// The event catalog as rows; `billhook.event_types` is filled from it.
#[pg_extern(immutable, parallel_safe)]
fn event_catalog() -> TableIterator<
    'static,
    (name!(name, &'static str), name!(category, &'static str), name!(description, &'static str)),
> {
    TableIterator::new(EVENTS.iter().map(|e| (e.name, e.category, e.description)))
}
