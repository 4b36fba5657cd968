//! Delivering: the background worker (`worker`) fans committed events out into deliveries, claims
//! the due ones, builds each push (`push`), hands them to the sender threads (`senders`), which
//! send them over HTTP (`http_client`, addresses checked by `url_policy`), and records what came
//! back. The rules it applies are pure, with plain unit tests: `retry` (when to try again),
//! `rate_limit`, `webhook_settings` (a webhook's own limits), `metrics`.

pub mod http_client;
pub mod metrics;
pub mod push;
pub mod rate_limit;
pub mod retry;
pub mod senders;
pub mod url_policy;
pub mod webhook_settings;
pub mod worker;
