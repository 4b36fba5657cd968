//! Every setting of billhook, all `billhook.*`. The worker's are reloadable with SIGHUP (the worker
//! applies them without a restart; a worker whose place in `billhook.databases` names another
//! database restarts, one whose place is gone ends) and read only
//! through the functions below; `billhook.administration_id` is each session's, read in SQL.

use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Duration;

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;

use crate::delivering::retry::{RetrySchedule, DEFAULT_SCHEDULE};

static DATABASE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"postgres"));
static DATABASES: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static WORKERS: GucSetting<i32> = GucSetting::<i32>::new(1);
/// Read by the SQL functions (billhook.current_administration_id) and by the tracked tables'
/// triggers; registered so that it is documented in pg_settings and SHOW knows it before it is set.
static ADMINISTRATION_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// The session's `billhook.administration_id`: None when it is unset or empty, Err with the value
/// when it is not an id (the rule of billhook.current_administration_id).
pub fn session_administration() -> Result<Option<i64>, String> {
    let setting = ADMINISTRATION_ID.get();
    parse_administration_id(setting.as_deref().map(|s| s.to_string_lossy()).as_deref())
}

fn parse_administration_id(setting: Option<&str>) -> Result<Option<i64>, String> {
    match setting.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(id) if (1..=18).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_digit()) => {
            id.parse().map(Some).map_err(|_| id.to_string())
        }
        Some(other) => Err(other.to_string()),
    }
}
static BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(500);
static CONCURRENCY: GucSetting<i32> = GucSetting::<i32>::new(32);
static MAX_IN_FLIGHT_PER_WEBHOOK: GucSetting<i32> = GucSetting::<i32>::new(8);
static CONNECT_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(5_000);
static REQUEST_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(10_000);
static RETRY_SCHEDULE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(DEFAULT_SCHEDULE));
static MAX_RESPONSE_BODY: GucSetting<i32> = GucSetting::<i32>::new(16 * 1024);
static POLL_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(5_000);
static ALLOW_PRIVATE_TARGETS: GucSetting<bool> = GucSetting::<bool>::new(false);
static RETENTION: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);
static FAILED_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(30 * 24 * 3600);
static OUTBOX_WINDOW: GucSetting<i32> = GucSetting::<i32>::new(24 * 3600);
static SCHEDULE_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60_000);
static RECURRING_MAX_FAILURES: GucSetting<i32> = GucSetting::<i32>::new(5);
static TLS_CA_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
static DISABLE_AFTER: GucSetting<i32> = GucSetting::<i32>::new(5 * 24 * 3600);
static DISABLE_AFTER_FAILURES: GucSetting<i32> = GucSetting::<i32>::new(50);
static FAILING_AFTER_FAILURES: GucSetting<i32> = GucSetting::<i32>::new(10);

pub fn define() {
    GucRegistry::define_string_guc(
        c"billhook.database",
        c"Database whose deliveries the background worker sends.",
        c"The worker waits while this database or the billhook extension in it does not exist.",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"billhook.databases",
        c"Databases the background workers deliver for, one worker each (comma-separated).",
        c"Replaces billhook.database when set; at most 16 databases.",
        &DATABASES,
        GucContext::Sighup,
        GucFlags::default(),
    );
    int(
        c"billhook.workers",
        c"Delivery workers per database; each sends the pushes of its share of the webhooks.",
        c"A webhook's pushes all go through one worker (webhook id modulo billhook.workers), so its in-flight \
          cap, rate limit, pauses and ordering hold as with one. At most 8.",
        &WORKERS,
        1,
        MAX_WORKERS_PER_DATABASE as i32,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"billhook.administration_id",
        c"The administration (tenant) this session works in.",
        c"Under tenant isolation (billhook.enable_tenant_isolation()) a restricted role sees and writes only this \
          administration's rows; otherwise it is the default administration_id of new rows (unset: 1).",
        &ADMINISTRATION_ID,
        GucContext::Userset,
        GucFlags::default(),
    );
    int(
        c"billhook.batch_size",
        c"Deliveries claimed and recorded per database round trip.",
        c"",
        &BATCH_SIZE,
        1,
        10_000,
        GucFlags::default(),
    );
    int(
        c"billhook.concurrency",
        c"HTTP requests the worker sends in parallel.",
        c"",
        &CONCURRENCY,
        1,
        512,
        GucFlags::default(),
    );
    int(
        c"billhook.max_in_flight_per_webhook",
        c"Requests one webhook may have in flight at once.",
        c"Keeps a slow or dead endpoint from taking every connection.",
        &MAX_IN_FLIGHT_PER_WEBHOOK,
        crate::delivering::webhook_settings::MAX_IN_FLIGHT.0,
        crate::delivering::webhook_settings::MAX_IN_FLIGHT.1,
        GucFlags::default(),
    );
    int(
        c"billhook.connect_timeout",
        c"Time allowed to resolve and connect to a webhook URL.",
        c"",
        &CONNECT_TIMEOUT,
        10,
        600_000,
        GucFlags::UNIT_MS,
    );
    int(
        c"billhook.request_timeout",
        c"Time allowed for a whole push, from connecting to reading the response.",
        c"",
        &REQUEST_TIMEOUT,
        crate::delivering::webhook_settings::REQUEST_TIMEOUT_MS.0,
        crate::delivering::webhook_settings::REQUEST_TIMEOUT_MS.1,
        GucFlags::UNIT_MS,
    );
    unsafe {
        GucRegistry::define_string_guc_with_hooks(
            c"billhook.retry_schedule",
            c"Delays before each retry of a failed push, comma-separated (units ms, s, m, h, d).",
            c"Each delay gets +/-20% jitter; the number of delays is the number of retries.",
            &RETRY_SCHEDULE,
            GucContext::Sighup,
            GucFlags::default(),
            Some(check_retry_schedule),
            None,
            None,
        );
    }
    int(
        c"billhook.max_response_body",
        c"Bytes of a receiver's response body that are read and stored.",
        c"",
        &MAX_RESPONSE_BODY,
        0,
        1024 * 1024,
        GucFlags::UNIT_BYTE,
    );
    int(
        c"billhook.poll_interval",
        c"Longest sleep of the worker between looks at the queue.",
        c"Commits that create deliveries wake the worker at once; polling only catches retries and missed wake-ups.",
        &POLL_INTERVAL,
        10,
        3_600_000,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_bool_guc(
        c"billhook.allow_private_targets",
        c"Allow pushes to loopback, private, link-local and unspecified addresses.",
        c"Off by default so webhook URLs cannot reach internal services.",
        &ALLOW_PRIVATE_TARGETS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"billhook.tls_ca_file",
        c"PEM file of certificate authorities trusted for https:// webhooks, besides Mozilla's roots.",
        c"Read when the worker starts its senders and by each registration check; a reload picks up a replaced file.",
        &TLS_CA_FILE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    int(
        c"billhook.retention",
        c"Age after which succeeded deliveries and their events are purged; 0 keeps them.",
        c"Failed deliveries go after billhook.failed_retention.",
        &RETENTION,
        0,
        i32::MAX,
        GucFlags::UNIT_S,
    );
    int(
        c"billhook.failed_retention",
        c"Age (since their last attempt) after which failed deliveries are purged while billhook.retention is on; 0 keeps them.",
        c"Until then they can be replayed; kept, they keep their window of the outbox.",
        &FAILED_RETENTION,
        0,
        i32::MAX,
        GucFlags::UNIT_S,
    );
    int(
        c"billhook.outbox_window",
        c"How long the events of one window of the outbox's partitions are written for; 0: the window never changes.",
        c"Events, their deliveries and attempts are partitioned by window; the worker makes the next windows ahead.",
        &OUTBOX_WINDOW,
        0,
        i32::MAX,
        GucFlags::UNIT_S,
    );
    int(
        c"billhook.schedule_interval",
        c"How often the worker runs billhook.run_schedules(); 0 turns the worker's sweeps off.",
        c"Overdue invoices, expired quotations and due recurring invoices.",
        &SCHEDULE_INTERVAL,
        0,
        i32::MAX,
        GucFlags::UNIT_MS,
    );
    int(
        c"billhook.disable_after",
        c"How long every push to a webhook must have failed before the worker disables it; 0 never does.",
        c"Also takes billhook.disable_after_failures failed attempts in a row. A disabled webhook's deliveries are held until it is enabled.",
        &DISABLE_AFTER,
        0,
        i32::MAX,
        GucFlags::UNIT_S,
    );
    int(
        c"billhook.disable_after_failures",
        c"Failed attempts in a row a webhook must have before the worker disables it.",
        c"",
        &DISABLE_AFTER_FAILURES,
        1,
        i32::MAX,
        GucFlags::default(),
    );
    int(
        c"billhook.failing_after_failures",
        c"Failed attempts in a row after which the worker emits the operational event webhook.failing; 0 never does.",
        c"Once per failing streak: a success ends the streak.",
        &FAILING_AFTER_FAILURES,
        0,
        i32::MAX,
        GucFlags::default(),
    );
    int(
        c"billhook.recurring_max_failures",
        c"Failed generations of a recurring invoice in a row before its schedule is deactivated.",
        c"",
        &RECURRING_MAX_FAILURES,
        1,
        1000,
        GucFlags::default(),
    );
}

fn int(
    name: &'static CStr,
    short_description: &'static CStr,
    long_description: &'static CStr,
    setting: &'static GucSetting<i32>,
    min: i32,
    max: i32,
    flags: GucFlags,
) {
    GucRegistry::define_int_guc(
        name,
        short_description,
        long_description,
        setting,
        min,
        max,
        GucContext::Sighup,
        flags,
    );
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_retry_schedule(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let text = if newval.is_null() || (*newval).is_null() {
        ""
    } else {
        CStr::from_ptr(*newval).to_str().unwrap_or("\u{fffd}")
    };
    match RetrySchedule::parse(text) {
        Ok(_) => true,
        Err(problem) => {
            let detail = CString::new(problem).unwrap_or_default();
            pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(detail.as_ptr());
            false
        }
    }
}

fn string(setting: &GucSetting<Option<CString>>) -> String {
    setting.get().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

fn millis(setting: &GucSetting<i32>) -> Duration {
    Duration::from_millis(setting.get().max(0) as u64)
}

/// A setting in seconds where 0 means never.
fn seconds(setting: &GucSetting<i32>) -> Option<Duration> {
    Some(setting.get()).filter(|s| *s > 0).map(|s| Duration::from_secs(s as u64))
}

/// The databases served, in order: a worker each (`billhook.databases`, else `billhook.database`).
pub fn databases() -> Vec<String> {
    database_list(&string(&DATABASES), &string(&DATABASE))
}

/// At most this many databases get a worker; later names in the list are left out.
pub const MAX_DATABASES: usize = 16;
/// The most workers one database may have (`billhook.workers`).
pub const MAX_WORKERS_PER_DATABASE: usize = 8;

/// Delivery workers per configured database.
pub fn workers() -> usize {
    (WORKERS.get().max(1) as usize).min(MAX_WORKERS_PER_DATABASE)
}

/// The names of a comma-separated list, trimmed, without empty names and repeats, at most
/// MAX_DATABASES; `fallback` alone when the list names none.
fn database_list(list: &str, fallback: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) && names.len() < MAX_DATABASES {
            names.push(name.to_string());
        }
    }
    if names.is_empty() && !fallback.trim().is_empty() {
        names.push(fallback.trim().to_string());
    }
    names
}

pub fn poll_interval() -> Duration {
    millis(&POLL_INTERVAL)
}

/// The settings the worker runs with, read at its start and after each SIGHUP.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerSettings {
    pub http: crate::delivering::http_client::HttpSettings,
    /// Deliveries claimed and outcomes recorded per round.
    pub batch_size: usize,
    pub retry_schedule: RetrySchedule,
    pub poll_interval: Duration,
    /// None: the schedules are not run.
    pub schedule_interval: Option<Duration>,
    /// None: nothing is purged.
    pub retention: Option<Duration>,
    /// How long failed deliveries stay while there is a retention; None: until replayed or deleted.
    pub failed_retention: Option<Duration>,
    /// How long one window of the outbox's partitions is written; None: the window never changes.
    pub outbox_window: Option<Duration>,
    pub auto_disable: AutoDisable,
    /// The failed attempts in a row that make a webhook.failing event; 0: none.
    pub failing_after_failures: i32,
}

/// When the worker disables a webhook whose pushes all fail: after `after` of failures (None: never)
/// and at least `failures` failed attempts in a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoDisable {
    pub after: Option<Duration>,
    pub failures: i32,
}

pub fn worker_settings() -> WorkerSettings {
    let schedule_interval = millis(&SCHEDULE_INTERVAL);
    WorkerSettings {
        http: http_settings(),
        batch_size: BATCH_SIZE.get().max(1) as usize,
        retry_schedule: RetrySchedule::parse(&string(&RETRY_SCHEDULE))
            .expect("the check hook admits only valid schedules"),
        poll_interval: poll_interval(),
        schedule_interval: (!schedule_interval.is_zero()).then_some(schedule_interval),
        retention: seconds(&RETENTION),
        failed_retention: seconds(&FAILED_RETENTION),
        outbox_window: seconds(&OUTBOX_WINDOW),
        auto_disable: AutoDisable { after: seconds(&DISABLE_AFTER), failures: DISABLE_AFTER_FAILURES.get().max(1) },
        failing_after_failures: FAILING_AFTER_FAILURES.get().max(0),
    }
}

/// The settings the HTTP side needs, read on the main thread and handed to the senders.
pub fn http_settings() -> crate::delivering::http_client::HttpSettings {
    crate::delivering::http_client::HttpSettings {
        connect_timeout: millis(&CONNECT_TIMEOUT),
        request_timeout: millis(&REQUEST_TIMEOUT),
        max_response_body: MAX_RESPONSE_BODY.get().max(0) as usize,
        allow_private_targets: ALLOW_PRIVATE_TARGETS.get(),
        concurrency: CONCURRENCY.get().max(1) as usize,
        max_in_flight_per_webhook: MAX_IN_FLIGHT_PER_WEBHOOK.get().max(1) as usize,
        tls_ca_file: Some(string(&TLS_CA_FILE)).filter(|path| !path.is_empty()).map(|path| {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            (path, modified)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_administration_is_an_id_of_up_to_18_digits_or_none() {
        assert_eq!(parse_administration_id(None), Ok(None));
        assert_eq!(parse_administration_id(Some(" ")), Ok(None));
        assert_eq!(parse_administration_id(Some(" 42 ")), Ok(Some(42)));
        assert_eq!(parse_administration_id(Some("999999999999999999")), Ok(Some(999_999_999_999_999_999)));
        for refused in ["-1", "1e3", "0x10", "1234567890123456789", "٣"] {
            assert_eq!(parse_administration_id(Some(refused)), Err(refused.to_string()));
        }
    }

    #[test]
    fn the_database_list_is_trimmed_without_repeats_or_empty_names() {
        assert_eq!(database_list(" shop, billing ,,shop ", "postgres"), ["shop", "billing"]);
        assert_eq!(database_list("", "postgres"), ["postgres"]);
        assert_eq!(database_list(" , ", "postgres"), ["postgres"]);
        assert!(database_list("", "").is_empty());
    }

    #[test]
    fn the_database_list_keeps_the_first_sixteen() {
        let list = (0..20).map(|i| format!("db{i}")).collect::<Vec<_>>().join(",");
        let names = database_list(&list, "postgres");
        assert_eq!(names.len(), MAX_DATABASES);
        assert_eq!(names.last().map(String::as_str), Some("db15"));
    }
}
