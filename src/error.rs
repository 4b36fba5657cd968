//! One error type for everything billhook reports to SQL: each variant carries its SQLSTATE and a
//! hint naming what is allowed.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::catalog::subscriptions::{UnknownEvent, Unregistrable};
use crate::catalog::{self, EntityKind, CATEGORIES};
use crate::delivering::push::headers::{self, MAX_HEADERS};
use crate::delivering::url_policy::{self, MAX_URL_LENGTH};
use crate::delivering::webhook_settings;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BillhookError {
    #[error("unknown event \"{0}\" in enabled_events")]
    UnknownEvent(String),
    #[error("invalid webhook url \"{url}\": {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("unknown entity type \"{0}\"")]
    UnknownEntityType(String),
    #[error("trigger misuse: {0}")]
    TriggerMisuse(String),
    #[error("webhook url \"{url}\" failed the registration check: {answer}")]
    EndpointCheckFailed { url: String, answer: String },
    #[error("invalid webhook header \"{name}\": {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("invalid {setting} {value}: {reason}")]
    InvalidSetting { setting: &'static str, value: String, reason: String },
    #[error("event type \"{name}\" in category \"{category}\" cannot be registered: {}", describe(reason))]
    InvalidEventType { name: String, category: String, reason: Unregistrable },
    /// The key is a secret: the message does not repeat it.
    #[error("invalid signing key: not an ed25519 key")]
    InvalidSigningKey,
    #[error("{what} cannot be read: {reason}")]
    UnreadableJson { what: &'static str, reason: String },
    #[error("tracked table {table}: column {column} {reason}")]
    TrackedColumn { table: String, column: String, reason: String },
    #[error(
        "{table}: a row of administration {row} cannot be written under tenant isolation by a session of {session}"
    )]
    OtherAdministration { table: String, row: i64, session: String },
    #[error("a table owner's code changed rows that emit events while billhook wrote the transaction's events")]
    ChangedWhileWriting,
}

fn describe(reason: &Unregistrable) -> &'static str {
    match reason {
        Unregistrable::BadName => "the name is not <category>.<action>",
        Unregistrable::TakenCategory => "the category is built in or a Moneybird name",
    }
}

impl BillhookError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            BillhookError::UnknownEvent(_)
            | BillhookError::InvalidUrl { .. }
            | BillhookError::EndpointCheckFailed { .. }
            | BillhookError::InvalidHeader { .. }
            | BillhookError::InvalidSetting { .. }
            | BillhookError::InvalidEventType { .. }
            | BillhookError::InvalidSigningKey
            | BillhookError::UnknownEntityType(_) => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            BillhookError::TriggerMisuse(_) => PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            BillhookError::UnreadableJson { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            BillhookError::OtherAdministration { .. } => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            BillhookError::TrackedColumn { .. } => PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            BillhookError::ChangedWhileWriting => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        }
    }

    pub fn hint(&self) -> String {
        match self {
            BillhookError::UnknownEvent(_) => format!(
                "Use an event name such as \"invoice.paid\" (see billhook.event_types), a category ({}, {}), \"*\" for all \
                 events but the operational ones, or a Moneybird event name (see billhook.moneybird_events) or \
                 top-level name ({}).",
                CATEGORIES.join(", "),
                catalog::OPERATIONS,
                crate::catalog::moneybird_names::TOP_LEVEL_NAMES.join(", ")
            ),
            BillhookError::InvalidUrl { .. } => format!(
                "Use an absolute http:// or https:// URL with a host, at most {MAX_URL_LENGTH} characters."
            ),
            BillhookError::UnknownEntityType(_) => {
                let names: Vec<&str> = EntityKind::ALL.iter().map(|kind| kind.entity_type()).collect();
                format!("Use one of {}.", names.join(", "))
            }
            BillhookError::EndpointCheckFailed { .. } => {
                "The URL must answer a signed POST with HTTP 200; pass verify => false to register it without the check."
                    .to_string()
            }
            BillhookError::InvalidHeader { .. } => format!(
                "Use a JSON object of at most {MAX_HEADERS} header names to string values without control characters; \
                 billhook sets {} and the webhook-* headers itself.",
                headers::RESERVED.join(", ")
            ),
            BillhookError::InvalidSetting { setting, .. } => webhook_settings::allowed(setting),
            BillhookError::InvalidSigningKey => {
                "Use whsk_ and the base64 of a 32-byte ed25519 seed, such as billhook.generate_signing_key() makes."
                    .to_string()
            }
            BillhookError::InvalidEventType { .. } => format!(
                "Use a name such as \"order.shipped\": a new category, then a dot and an action, in lower case \
                 letters, digits and underscores. Taken categories: {}, {}, {}, {}.",
                CATEGORIES.join(", "),
                catalog::OPERATIONS,
                catalog::operation_prefixes().collect::<Vec<_>>().join(", "),
                crate::catalog::moneybird_names::TOP_LEVEL_NAMES.join(", ")
            ),
            BillhookError::UnreadableJson { .. } => {
                "Use JSON nested at most 128 levels deep, with numbers a double precision can hold.".to_string()
            }
            BillhookError::TrackedColumn { .. } => "The id column (integer or bigint, never NULL in a row), the \
                administration column (integer or bigint) and the state column (text) keep the types billhook.track_table \
                checked; after changing one, track the table again (billhook.untrack_table, billhook.track_table)."
                .to_string(),
            BillhookError::OtherAdministration { .. } => {
                "Tenant isolation is on: SET billhook.administration_id to the row's administration, or write the row's \
                 administration column as your own."
                    .to_string()
            }
            BillhookError::TriggerMisuse(_) => {
                "billhook's trigger functions are attached by the extension itself; do not attach them to other tables.".to_string()
            }
            BillhookError::ChangedWhileWriting => "A cast, output function or other code a tracked table's owner \
                defines runs as its rows are turned into JSON at commit: it may change no tracked table and no \
                billhook document, whose changes would commit without their events."
                .to_string(),
        }
    }

    /// Raises this error as a Postgres ERROR; the transaction (or subtransaction) aborts.
    pub fn report(self) -> ! {
        ErrorReport::new(self.sqlstate(), self.to_string(), "").set_hint(self.hint()).report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returns control to Postgres")
    }
}

impl From<UnknownEvent> for BillhookError {
    fn from(UnknownEvent(name): UnknownEvent) -> Self {
        BillhookError::UnknownEvent(name)
    }
}

impl From<url_policy::InvalidUrl> for BillhookError {
    fn from(url_policy::InvalidUrl { url, reason }: url_policy::InvalidUrl) -> Self {
        BillhookError::InvalidUrl { url, reason }
    }
}

impl From<headers::InvalidHeader> for BillhookError {
    fn from(headers::InvalidHeader { name, reason }: headers::InvalidHeader) -> Self {
        BillhookError::InvalidHeader { name, reason }
    }
}

impl From<webhook_settings::InvalidSetting> for BillhookError {
    fn from(webhook_settings::InvalidSetting { setting, value, reason }: webhook_settings::InvalidSetting) -> Self {
        BillhookError::InvalidSetting { setting, value, reason }
    }
}

/// Unwraps a result or raises its error in SQL.
pub trait OrReport<T> {
    fn or_report(self) -> T;
}

impl<T, E: Into<BillhookError>> OrReport<T> for Result<T, E> {
    fn or_report(self) -> T {
        self.unwrap_or_else(|e| e.into().report())
    }
}
