//! Pushes over HTTP with ureq, from plain threads. No Postgres calls here: the worker's main thread
//! submits jobs and collects outcomes; a byte on a socket pair wakes it when an outcome is ready.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use ureq::tls::{parse_pem, Certificate, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::rate_limit::RateLimit;
use crate::retry::{asks_to_slow_down, parse_retry_after, GONE};
use crate::sign::{signature_header, SigningKey};
use crate::target::{basic_auth, is_private_address};

pub const USER_AGENT: &str = concat!("billhook/", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_body: usize,
    pub allow_private_targets: bool,
    pub concurrency: usize,
    pub max_in_flight_per_webhook: usize,
    /// `billhook.tls_ca_file` and when it was last modified: a file replaced in place counts as
    /// new settings at the next reload.
    pub tls_ca_file: Option<(String, Option<SystemTime>)>,
}

/// One signed POST. The signature is made when the request leaves, so a retry carries a fresh
/// `webhook-timestamp` under the same `webhook-id` (the idempotency key).
pub struct Push {
    /// Without credentials: those travel in `headers` as Authorization (see `Push::new`), so no
    /// error text of the HTTP client can quote them.
    pub url: String,
    pub body: Vec<u8>,
    pub idempotency_key: String,
    pub signing_keys: Vec<SigningKey>,
    /// The webhook's own headers (checked when it was written, headers.rs).
    pub headers: Vec<(String, String)>,
    /// The webhook's own request timeout, instead of the agent's.
    pub request_timeout: Option<Duration>,
}

impl Push {
    /// A push to `url`, whose credentials (if any) become its Authorization header.
    pub fn new(url: &str, body: Vec<u8>, idempotency_key: String, signing_keys: Vec<SigningKey>) -> Push {
        let (url, authorization) = basic_auth(url);
        let headers = authorization.map(|value| ("Authorization".to_string(), value)).into_iter().collect();
        Push { url, body, idempotency_key, signing_keys, headers, request_timeout: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub started_at: SystemTime,
    pub duration: Duration,
    pub http_status: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Outcome {
    /// An attempt that got no answer, for `error`.
    fn failed(started_at: SystemTime, error: String) -> Outcome {
        Outcome {
            started_at,
            duration: started_at.elapsed().unwrap_or_default(),
            http_status: None,
            response_body: None,
            error: Some(error),
            retry_after: None,
        }
    }

    /// Any 2xx acknowledges the push.
    pub fn succeeded(&self) -> bool {
        matches!(self.http_status, Some(200..=299))
    }
}

/// A push refused by the address policy, before any byte is sent.
#[derive(Debug)]
struct RefusedTarget(IpAddr);

impl std::fmt::Display for RefusedTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused to connect to private address {} (billhook.allow_private_targets is off)", self.0)
    }
}

impl std::error::Error for RefusedTarget {}

/// Resolves like ureq does, then refuses the host if any of its addresses is private: checking the
/// addresses actually connected to (not the URL's text) also stops DNS names that point inside.
/// ureq resolves before it looks for a pooled connection, on a thread of its own when a timeout is
/// set: so an address in the URL is taken as it is, and a name's addresses are reused for
/// RESOLVED_FOR, instead of a thread and a lookup for every push.
#[derive(Debug)]
struct PolicyResolver {
    allow_private: bool,
    inner: DefaultResolver,
    /// By host and port: when they were resolved, and the addresses.
    resolved: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

/// How long a host name's addresses are reused.
const RESOLVED_FOR: Duration = Duration::from_secs(1);

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addresses = match literal_address(uri) {
            Some(address) => {
                let mut addresses = self.empty();
                addresses.push(address);
                addresses
            }
            None => self.resolve_name(uri, config, timeout)?,
        };
        if !self.allow_private {
            if let Some(private) = addresses.iter().find(|a| is_private_address(a.ip())) {
                return Err(ureq::Error::Other(Box::new(RefusedTarget(private.ip()))));
            }
        }
        Ok(addresses)
    }
}

impl PolicyResolver {
    fn new(allow_private: bool) -> PolicyResolver {
        PolicyResolver { allow_private, inner: DefaultResolver::default(), resolved: Mutex::new(HashMap::new()) }
    }

    fn resolve_name(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let key = format!("{}:{}", uri.host().unwrap_or_default(), port_of(uri).unwrap_or_default());
        let fresh = |(at, _): &&(Instant, ResolvedSocketAddrs)| at.elapsed() < RESOLVED_FOR;
        if let Some((_, addresses)) = self.resolved.lock().expect("resolved addresses").get(&key).filter(fresh) {
            return Ok(addresses.clone());
        }
        let addresses = self.inner.resolve(uri, config, timeout)?;
        let mut resolved = self.resolved.lock().expect("resolved addresses");
        resolved.retain(|_, (at, _)| at.elapsed() < RESOLVED_FOR);
        resolved.insert(key, (Instant::now(), addresses.clone()));
        Ok(addresses)
    }
}

/// The URL's port, or its scheme's.
fn port_of(uri: &ureq::http::Uri) -> Option<u16> {
    uri.port_u16().or_else(|| match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })
}

/// The socket address of a URL whose host is an IP address (`[…]` for IPv6).
fn literal_address(uri: &ureq::http::Uri) -> Option<std::net::SocketAddr> {
    let host = uri.host()?;
    let ip: IpAddr = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse().ok()?;
    Some(std::net::SocketAddr::new(ip, port_of(uri)?))
}

/// The roots TLS certificates are checked against: Mozilla's (webpki roots, built into billhook,
/// not the system's store), plus the certificates of `billhook.tls_ca_file`.
fn tls_roots(ca_file: Option<&str>) -> Result<RootCerts, String> {
    let Some(path) = ca_file else { return Ok(RootCerts::WebPki) };
    let unusable = |why: String| format!("billhook.tls_ca_file \"{path}\" {why}");
    let pem = std::fs::read(path).map_err(|e| unusable(format!("cannot be read: {e}")))?;
    let mut roots: Vec<Certificate<'static>> =
        webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().map(|der| Certificate::from_der(der.as_ref())).collect();
    let mozilla = roots.len();
    for item in parse_pem(&pem) {
        match item.map_err(|e| unusable(format!("is not a PEM file: {e}")))? {
            PemItem::Certificate(certificate) => roots.push(certificate),
            _ => continue,
        }
    }
    if roots.len() == mozilla {
        return Err(unusable("holds no PEM certificate".to_string()));
    }
    Ok(RootCerts::from(roots))
}

/// The HTTP client of the senders and of the registration check: an agent, or why none could be
/// made (an unusable `billhook.tls_ca_file`), which then is every push's error.
pub struct Client {
    agent: Result<ureq::Agent, String>,
    max_response_body: usize,
}

impl Client {
    pub fn new(settings: &HttpSettings) -> Client {
        let ca_file = settings.tls_ca_file.as_ref().map(|(path, _)| path.as_str());
        Client {
            agent: tls_roots(ca_file).map(|roots| agent(settings, roots)),
            max_response_body: settings.max_response_body,
        }
    }

    pub fn send(&self, push: &Push) -> Outcome {
        match &self.agent {
            Ok(agent) => post(agent, push, self.max_response_body),
            Err(unusable) => Outcome::failed(SystemTime::now(), unusable.clone()),
        }
    }
}

fn agent(settings: &HttpSettings, roots: RootCerts) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(settings.request_timeout))
        .timeout_connect(Some(settings.connect_timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(USER_AGENT)
        .max_idle_connections(settings.concurrency.max(8) * 4)
        .max_idle_connections_per_host(settings.concurrency.max(8))
        // ureq would otherwise take a proxy from HTTP(S)_PROXY / ALL_PROXY in the server's
        // environment, and the resolver below would then check the proxy's address instead of the
        // receiver's.
        .proxy(None)
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .build();
    let resolver = PolicyResolver::new(settings.allow_private_targets);
    ureq::Agent::with_parts(config, DefaultConnector::default(), resolver)
}

fn post(agent: &ureq::Agent, push: &Push, max_response_body: usize) -> Outcome {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let timestamp = started_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let signature = signature_header(&push.idempotency_key, timestamp, &push.body, &push.signing_keys);
    let mut request = agent.post(&push.url);
    if let Some(timeout) = push.request_timeout {
        request = request.config().timeout_global(Some(timeout)).build();
    }
    for (name, value) in &push.headers {
        request = request.header(name, value);
    }
    let sent = request
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", &push.idempotency_key)
        .header("webhook-id", &push.idempotency_key)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .send(&push.body[..]);
    let mut outcome = Outcome {
        started_at,
        duration: Duration::ZERO,
        http_status: None,
        response_body: None,
        error: None,
        retry_after: None,
    };
    match sent {
        Ok(mut response) => {
            let status = response.status().as_u16();
            outcome.http_status = Some(status);
            if asks_to_slow_down(status) {
                outcome.retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
            }
            let mut body = Vec::new();
            let read = response.body_mut().as_reader().take(max_response_body as u64).read_to_end(&mut body);
            outcome.response_body = Some(String::from_utf8_lossy(&body).into_owned());
            if let Err(e) = read {
                outcome.error = Some(format!("reading the response body: {e}"));
            }
        }
        Err(e) => outcome.error = Some(describe(&e)),
    }
    outcome.duration = clock.elapsed();
    outcome
}

fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(phase) => format!("timed out ({phase})"),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::Io(e) => format!("network error: {e}"),
        ureq::Error::Rustls(e) => format!("TLS: {e}"),
        other => other.to_string(),
    }
}

/// A job for the senders: a push, the webhook it goes to with that webhook's limits, and the
/// caller's tag that comes back with its outcome.
pub struct Job<T> {
    pub webhook_id: i64,
    pub limits: Limits,
    pub tag: T,
    pub push: Push,
}

/// A webhook's own limits (checked when it was written, webhook_settings.rs). The newest job of a
/// webhook sets them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limits {
    /// Instead of `HttpSettings::max_in_flight_per_webhook`.
    pub max_in_flight: Option<usize>,
    pub rate: Option<RateLimit>,
}

pub struct Done<T> {
    pub tag: T,
    pub outcome: Outcome,
}

/// Sender threads sharing one agent (and its keep-alive connections). The threads take jobs
/// themselves, round-robin over webhooks, never more than the webhook's in-flight cap at once for
/// one webhook (a slow endpoint keeps at most that many threads) and never faster than its rate
/// limit. The worker's main thread is not on the path from one push to the next.
///
/// Dropping the pool stops it without waiting: each thread ends after its current push, whose
/// outcome is dropped (the delivery's lease brings it back), so shutting down never waits for a
/// slow receiver.
pub struct SenderPool<T: Send + 'static> {
    settings: HttpSettings,
    shared: Arc<Shared<T>>,
    wake_reader: UnixStream,
}

struct Shared<T> {
    state: Mutex<Queues<T>>,
    work: Condvar,
}

/// A webhook counts towards the share of threads while it has work or had some this recently, so
/// a healthy endpoint between two claims keeps its share against endpoints that hang.
const RECENTLY_BUSY: Duration = Duration::from_secs(1);
/// Threads a webhook may hold while it has not answered a push yet, or while its pushes take longer
/// than SLOW_PUSH on average: an endpoint that hangs holds this many threads, not its whole cap,
/// until its request timeout tells.
const PROBING_THREADS: usize = 2;
const SLOW_PUSH: Duration = Duration::from_secs(1);
/// Weight of the newest push in a webhook's pace.
const PACE_WEIGHT: f64 = 0.2;
/// How long an endpoint that asked to slow down (retry::asks_to_slow_down) without a Retry-After is left alone.
const DEFAULT_PAUSE: Duration = Duration::from_secs(5);
/// The longest pause an endpoint's Retry-After can ask for.
const MAX_PAUSE: Duration = Duration::from_secs(3600);

struct Queues<T> {
    waiting: HashMap<i64, VecDeque<Job<T>>>,
    /// Webhooks with waiting jobs, in the order they get a turn.
    turns: VecDeque<i64>,
    active: HashMap<i64, usize>,
    /// When each webhook last had a job queued or finished, for the share of threads.
    last_busy: HashMap<i64, Instant>,
    /// How long each webhook's pushes took (a moving average): known-fast webhooks may use their
    /// whole cap.
    pace: HashMap<i64, Duration>,
    /// Webhooks whose endpoint asked for a pause (retry::asks_to_slow_down), until when.
    paused: HashMap<i64, Instant>,
    limits: HashMap<i64, Limits>,
    /// Each rate-limited webhook's bucket (see RateLimit), while it is not full.
    buckets: HashMap<i64, Instant>,
    done: Vec<Done<T>>,
    stopped: bool,
}

impl<T> Queues<T> {
    fn new() -> Self {
        Queues {
            waiting: HashMap::new(),
            turns: VecDeque::new(),
            active: HashMap::new(),
            last_busy: HashMap::new(),
            pace: HashMap::new(),
            paused: HashMap::new(),
            limits: HashMap::new(),
            buckets: HashMap::new(),
            done: Vec::new(),
            stopped: false,
        }
    }

    /// Threads a webhook may hold as of right, out of `threads`: an equal part for every busy
    /// webhook and one more, so that a webhook that turns up finds threads free even while others
    /// hang until their request timeout. Beyond its share a webhook takes threads only while a
    /// whole share stays free.
    fn share(&mut self, threads: usize) -> usize {
        let now = Instant::now();
        let (waiting, active) = (&self.waiting, &self.active);
        self.last_busy.retain(|webhook, at| {
            now.duration_since(*at) < RECENTLY_BUSY || waiting.contains_key(webhook) || active.contains_key(webhook)
        });
        let last_busy = &self.last_busy;
        self.limits.retain(|webhook, _| last_busy.contains_key(webhook));
        self.buckets.retain(|_, full_at| *full_at > now);
        (threads / (self.last_busy.len() + 1)).max(1)
    }

    fn next_job(&mut self, cap: usize, threads: usize) -> Option<Job<T>> {
        let share = self.share(threads);
        let idle = threads.saturating_sub(self.active.values().sum());
        let now = Instant::now();
        self.paused.retain(|_, until| *until > now);
        for _ in 0..self.turns.len() {
            let webhook = self.turns.pop_front()?;
            let limits = self.limits.get(&webhook).copied().unwrap_or_default();
            let cap = limits.max_in_flight.unwrap_or(cap);
            let proven = self.pace.get(&webhook).is_some_and(|pace| *pace <= SLOW_PUSH);
            let cap = if proven { cap } else { cap.min(PROBING_THREADS) };
            let active = self.active.entry(webhook).or_default();
            let bucket = limits.rate.map(|rate| rate.admit(self.buckets.get(&webhook).copied(), now));
            if *active >= cap
                || (*active >= share && idle <= share)
                || self.paused.contains_key(&webhook)
                || matches!(bucket, Some(Err(_)))
            {
                self.turns.push_back(webhook);
                continue;
            }
            if let Some(Ok(full_at)) = bucket {
                self.buckets.insert(webhook, full_at);
            }
            let queue = self.waiting.get_mut(&webhook)?;
            let job = queue.pop_front()?;
            *active += 1;
            if queue.is_empty() {
                self.waiting.remove(&webhook);
            } else {
                self.turns.push_back(webhook);
            }
            return Some(job);
        }
        None
    }

    fn queue(&mut self, job: Job<T>) {
        let webhook = job.webhook_id;
        self.limits.insert(webhook, job.limits);
        let queue = self.waiting.entry(webhook).or_default();
        if queue.is_empty() {
            self.turns.push_back(webhook);
        }
        queue.push_back(job);
        self.last_busy.insert(webhook, Instant::now());
    }

    /// After a 429, 502, 503 or 504 nothing more goes to the endpoint for the time it asked for
    /// (`Retry-After`), DEFAULT_PAUSE if it did not say, at most MAX_PAUSE.
    /// After a 410 Gone nothing more goes to it until the worker takes its jobs back
    /// (`discard_waiting_of`), at once: a sender must not start the next one first.
    fn pause_if_asked(&mut self, webhook: i64, outcome: &Outcome) {
        if outcome.http_status == Some(GONE) {
            self.paused.insert(webhook, Instant::now() + MAX_PAUSE);
        } else if outcome.http_status.is_some_and(asks_to_slow_down) {
            let pause = outcome.retry_after.unwrap_or(DEFAULT_PAUSE).min(MAX_PAUSE);
            let until = Instant::now() + pause;
            let paused = self.paused.entry(webhook).or_insert(until);
            *paused = (*paused).max(until);
        }
    }

    fn take_back(&mut self, webhook: i64) -> Vec<T> {
        self.paused.remove(&webhook);
        self.turns.retain(|w| *w != webhook);
        self.waiting.remove(&webhook).map(|queue| queue.into_iter().map(|job| job.tag).collect()).unwrap_or_default()
    }

    /// When the first pause still running ends.
    fn next_pause_end(&self, now: Instant) -> Option<Instant> {
        self.paused.values().filter(|until| **until > now).min().copied()
    }

    /// When a job that waits now may be taken at the soonest: the first pause that ends, or the
    /// first rate-limited webhook with waiting jobs whose next push may leave. None: nothing waits
    /// for the clock.
    fn next_start(&self, now: Instant) -> Option<Instant> {
        let rate_limited = self.waiting.keys().filter_map(|webhook| {
            let rate = self.limits.get(webhook)?.rate?;
            rate.next_free(*self.buckets.get(webhook)?, now)
        });
        rate_limited.chain(self.next_pause_end(now)).min()
    }

    fn finished(&mut self, webhook: i64, took: Duration) {
        self.last_busy.insert(webhook, Instant::now());
        let pace = self.pace.entry(webhook).or_insert(took);
        *pace = pace.mul_f64(1.0 - PACE_WEIGHT) + took.mul_f64(PACE_WEIGHT);
        if let Some(active) = self.active.get_mut(&webhook) {
            *active -= 1;
            if *active == 0 {
                self.active.remove(&webhook);
            }
        }
    }
}

impl<T: Send + 'static> SenderPool<T> {
    pub fn start(settings: HttpSettings) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { state: Mutex::new(Queues::new()), work: Condvar::new() });
        let (wake_reader, wake_writer) = UnixStream::pair()?;
        wake_reader.set_nonblocking(true)?;
        wake_writer.set_nonblocking(true)?;
        let client = Arc::new(Client::new(&settings));
        // Threads start with the signal mask of the thread that spawns them: with every signal
        // blocked, SIGTERM, SIGHUP and latch signals reach the worker's main thread, whose Postgres
        // handlers expect to run there.
        let spawned = with_signals_blocked(|| {
            (0..settings.concurrency).try_for_each(|n| {
                let (shared, client, settings) = (shared.clone(), client.clone(), settings.clone());
                let mut wake = wake_writer.try_clone()?;
                std::thread::Builder::new()
                    .name(format!("billhook-sender-{n}"))
                    .spawn(move || send_jobs(&shared, &client, &settings, &mut wake))
                    .map(drop)
            })
        });
        let pool = SenderPool { settings, shared, wake_reader };
        spawned.map(|()| pool)
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    pub fn submit(&self, jobs: impl IntoIterator<Item = Job<T>>) {
        let mut state = self.shared.state.lock().expect("sender state");
        for job in jobs {
            state.queue(job);
        }
        drop(state);
        self.shared.work.notify_all();
    }

    /// Drops the jobs no sender has started; returns their tags.
    pub fn discard_waiting(&self) -> Vec<T> {
        let mut state = self.shared.state.lock().expect("sender state");
        state.turns.clear();
        state.waiting.drain().flat_map(|(_, queue)| queue.into_iter().map(|job| job.tag)).collect()
    }

    /// Drops the jobs of `webhook` no sender has started, and its pause; returns their tags.
    pub fn discard_waiting_of(&self, webhook: i64) -> Vec<T> {
        self.shared.state.lock().expect("sender state").take_back(webhook)
    }

    /// Webhooks paused at their endpoint's request: claim nothing more for them meanwhile.
    pub fn paused_webhooks(&self) -> Vec<i64> {
        let now = Instant::now();
        let state = self.shared.state.lock().expect("sender state");
        state.paused.iter().filter(|(_, until)| **until > now).map(|(webhook, _)| *webhook).collect()
    }

    /// How long each webhook's recent pushes took (a moving average).
    pub fn paces(&self) -> HashMap<i64, Duration> {
        self.shared.state.lock().expect("sender state").pace.clone()
    }

    /// How long until the first paused endpoint may be sent to again.
    pub fn next_pause_end(&self) -> Option<Duration> {
        let now = Instant::now();
        let state = self.shared.state.lock().expect("sender state");
        state.next_pause_end(now).map(|at| at.duration_since(now))
    }

    /// The socket that becomes readable when outcomes are waiting.
    pub fn wake_fd(&self) -> RawFd {
        self.wake_reader.as_raw_fd()
    }

    /// Outcomes ready now, without blocking.
    pub fn take_done(&self) -> Vec<Done<T>> {
        let mut sink = [0u8; 256];
        while matches!((&self.wake_reader).read(&mut sink), Ok(n) if n > 0) {}
        std::mem::take(&mut self.shared.state.lock().expect("sender state").done)
    }
}

impl<T: Send + 'static> Drop for SenderPool<T> {
    fn drop(&mut self) {
        self.shared.state.lock().expect("sender state").stopped = true;
        self.shared.work.notify_all();
    }
}

fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let result = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        result
    }
}

/// Runs `send` (one push); a panic in the HTTP stack becomes a failed attempt instead of a lost
/// outcome.
fn attempt(send: impl FnOnce() -> Outcome) -> Outcome {
    let started_at = SystemTime::now();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(send)).unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Outcome::failed(started_at, format!("billhook's HTTP client failed: {reason}"))
    })
}

fn send_jobs<T>(shared: &Shared<T>, client: &Client, settings: &HttpSettings, wake: &mut UnixStream) {
    let mut state = shared.state.lock().expect("sender state");
    loop {
        if state.stopped {
            return;
        }
        let Some(job) = state.next_job(settings.max_in_flight_per_webhook, settings.concurrency) else {
            // Jobs of a paused or rate-limited endpoint wait for their time.
            let now = Instant::now();
            state = match state.next_start(now) {
                Some(end) => shared.work.wait_timeout(state, end.duration_since(now)).expect("sender state").0,
                None => shared.work.wait(state).expect("sender state"),
            };
            continue;
        };
        drop(state);
        let outcome = attempt(|| client.send(&job.push));
        state = shared.state.lock().expect("sender state");
        state.pause_if_asked(job.webhook_id, &outcome);
        state.finished(job.webhook_id, outcome.duration);
        state.done.push(Done { tag: job.tag, outcome });
        // Another sender may have been waiting for this webhook's slot.
        shared.work.notify_one();
        // A full socket buffer already holds a wake-up; nothing is lost.
        let _ = wake.write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;

    fn settings(allow_private_targets: bool) -> HttpSettings {
        HttpSettings {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            max_response_body: 5,
            allow_private_targets,
            concurrency: 4,
            max_in_flight_per_webhook: 2,
            tls_ca_file: None,
        }
    }

    /// Answers one request with `response` and returns the request's head and body.
    fn serve_once(response: &'static str) -> (String, std::thread::JoinHandle<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            (&stream).write_all(response.as_bytes()).unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        (url, handle)
    }

    #[test]
    fn an_address_in_the_url_needs_no_lookup() {
        let address = |url: &str| literal_address(&url.parse().unwrap()).map(|a| a.to_string());
        assert_eq!(address("http://127.0.0.1:8080/hook").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(address("https://[::1]/hook").as_deref(), Some("[::1]:443"));
        assert_eq!(address("http://10.1.2.3/").as_deref(), Some("10.1.2.3:80"));
        assert_eq!(address("https://hooks.example.com/in"), None);
    }

    #[test]
    fn a_name_is_resolved_once_per_interval_and_its_addresses_checked_every_time() {
        let config = ureq::config::Config::default();
        let uri: ureq::http::Uri = "http://localhost:9/hook".parse().unwrap();
        let resolver = PolicyResolver::new(true);
        let first = resolver.resolve(&uri, &config, NextTimeout::default()).unwrap();
        assert!(first.iter().all(|a| a.ip().is_loopback() && a.port() == 9), "{:?}", &first[..]);
        let resolved_at = resolver.resolved.lock().unwrap()["localhost:9"].0;
        assert_eq!(&resolver.resolve(&uri, &config, NextTimeout::default()).unwrap()[..], &first[..]);
        assert_eq!(resolver.resolved.lock().unwrap()["localhost:9"].0, resolved_at, "reused, not looked up again");

        let strict = PolicyResolver::new(false);
        for _ in 0..2 {
            let refused = strict.resolve(&uri, &config, NextTimeout::default()).unwrap_err();
            assert!(refused.to_string().contains("refused to connect to private address"), "{refused}");
        }
        let literal: ureq::http::Uri = "http://127.0.0.1:9/".parse().unwrap();
        assert!(strict.resolve(&literal, &config, NextTimeout::default()).is_err());
        assert!(strict.resolved.lock().unwrap().get("127.0.0.1:9").is_none(), "a literal is never looked up");
    }

    fn push(url: String) -> Push {
        Push::new(&url, br#"{"a":1}"#.to_vec(), "key-1".into(), vec![SigningKey::Hmac(b"k".to_vec())])
    }

    #[test]
    fn posts_signed_json_and_truncates_the_response() {
        let (url, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
        let outcome = Client::new(&settings(true)).send(&push(url));
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
        let lower = head.to_ascii_lowercase();
        for expected in
            ["content-type: application/json", "idempotency-key: key-1", "webhook-id: key-1", "user-agent: billhook/"]
        {
            assert!(lower.contains(expected), "{expected} in {head}");
        }
        let timestamp: i64 =
            lower.lines().find_map(|l| l.strip_prefix("webhook-timestamp: ")).unwrap().trim().parse().unwrap();
        let signature = head.lines().find_map(|l| l.strip_prefix("webhook-signature: ")).unwrap().trim().to_string();
        assert_eq!(signature, signature_header("key-1", timestamp, br#"{"a":1}"#, &[SigningKey::Hmac(b"k".to_vec())]));
        assert_eq!(body, r#"{"a":1}"#);
        assert!(outcome.succeeded());
        assert_eq!(
            (outcome.http_status, outcome.response_body.as_deref(), outcome.error),
            (Some(200), Some("hello"), None)
        );
    }

    #[test]
    fn sends_url_credentials_as_basic_auth_and_the_webhooks_headers() {
        let (url, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let mut push = push(url.replace("http://", "http://shop:s%40cret@"));
        push.headers.push(("X-Shop".to_string(), "7".to_string()));
        let outcome = Client::new(&settings(true)).send(&push);
        let (head, _) = server.join().unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
        assert!(head.contains("\r\nauthorization: Basic c2hvcDpzQGNyZXQ=\r\n"), "{head}");
        assert!(head.contains("\r\nx-shop: 7\r\n"), "{head}");
        assert!(!head.contains("s%40cret") && !push.url.contains("cret"), "{head}");
    }

    #[test]
    fn a_push_may_have_a_shorter_timeout_than_the_agent() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut push = push(format!("http://{}/", listener.local_addr().unwrap()));
        push.request_timeout = Some(Duration::from_millis(200));
        let started = Instant::now();
        let outcome = Client::new(&settings(true)).send(&push);
        assert!(started.elapsed() < Duration::from_secs(1), "the agent's 2 s did not apply");
        assert!(outcome.error.unwrap().starts_with("timed out"));
    }

    #[test]
    fn an_unusable_ca_file_is_every_pushs_error() {
        let dir = std::env::temp_dir().join(format!("billhook-ca-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        for (path, why) in
            [("/nonexistent/ca.pem", "cannot be read"), (empty.to_str().unwrap(), "holds no PEM certificate")]
        {
            let client = Client::new(&HttpSettings { tls_ca_file: Some((path.to_string(), None)), ..settings(true) });
            let error = client.send(&push("https://example.com/".into())).error.unwrap();
            assert!(error.starts_with(&format!("billhook.tls_ca_file \"{path}\" {why}")), "{error}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn redirects_are_not_followed_and_retry_after_is_read() {
        let (url, server) =
            serve_once("HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n");
        let outcome = Client::new(&settings(true)).send(&push(url));
        server.join().unwrap();
        assert_eq!(outcome.http_status, Some(302));
        assert!(!outcome.succeeded());

        let (url, server) = serve_once("HTTP/1.1 503 Busy\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n");
        let outcome = Client::new(&settings(true)).send(&push(url));
        server.join().unwrap();
        assert_eq!((outcome.http_status, outcome.retry_after), (Some(503), Some(Duration::from_secs(120))));
    }

    #[test]
    fn private_targets_are_refused_unless_allowed() {
        let outcome = Client::new(&settings(false)).send(&push("http://127.0.0.1:9/hook".into()));
        assert_eq!(outcome.http_status, None);
        let error = outcome.error.unwrap();
        assert!(error.contains("refused to connect to private address 127.0.0.1"), "{error}");
    }

    #[test]
    fn connection_errors_are_failed_attempts() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let outcome = Client::new(&settings(true)).send(&push(format!("http://127.0.0.1:{port}/")));
        assert!(!outcome.succeeded());
        assert!(outcome.error.is_some());
    }

    #[test]
    fn pool_returns_every_outcome_with_its_tag() {
        let pool = SenderPool::start(settings(false)).unwrap();
        pool.submit((0..5).map(|n| Job {
            webhook_id: n % 2,
            limits: Limits::default(),
            tag: n,
            push: push("http://10.0.0.1/".into()),
        }));
        let mut tags = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tags.len() < 5 && Instant::now() < deadline {
            tags.extend(pool.take_done().into_iter().map(|d| d.tag));
            std::thread::sleep(Duration::from_millis(5));
        }
        tags.sort();
        assert_eq!(tags, vec![0, 1, 2, 3, 4]);
    }

    fn job(webhook_id: i64, tag: u32) -> Job<u32> {
        Job { webhook_id, limits: Limits::default(), tag, push: push("http://x/".into()) }
    }

    #[test]
    fn a_webhook_never_has_more_than_its_cap_in_flight() {
        let mut queues: Queues<u32> = Queues::new();
        (0..5).for_each(|n| queues.queue(job(1, n)));
        (10..12).for_each(|n| queues.queue(job(2, n)));
        let taken: Vec<(i64, u32)> =
            std::iter::from_fn(|| queues.next_job(2, 32)).map(|j| (j.webhook_id, j.tag)).collect();
        assert_eq!(taken, vec![(1, 0), (2, 10), (1, 1), (2, 11)], "round-robin, two each");
        queues.finished(1, Duration::from_millis(1));
        assert_eq!(queues.next_job(2, 32).map(|j| j.tag), Some(2), "a finished push frees a slot");
        assert!(queues.next_job(2, 32).is_none());
    }

    #[test]
    fn hanging_webhooks_leave_a_share_of_threads_free_for_others() {
        let mut queues: Queues<u32> = Queues::new();
        for hung in 1..=4 {
            (0..100).for_each(|n| queues.queue(job(hung, n)));
        }
        let hung_threads = std::iter::from_fn(|| queues.next_job(8, 32)).count();
        assert_eq!(hung_threads, 4 * PROBING_THREADS, "webhooks that never answered probe with few threads");
        // Webhooks that answered once before they hung hold more, yet leave a share for others.
        for hung in 1..=4 {
            queues.pace.insert(hung, Duration::from_millis(1));
        }
        let hung_threads = hung_threads + std::iter::from_fn(|| queues.next_job(8, 32)).count();
        assert!(hung_threads <= 32 - 32 / 5, "{hung_threads} of 32 threads taken by four hanging webhooks");
        queues.pace.insert(5, Duration::from_millis(1));
        (0..100).for_each(|n| queues.queue(job(5, n)));
        let healthy_threads = std::iter::from_fn(|| queues.next_job(8, 32)).filter(|j| j.webhook_id == 5).count();
        assert!(healthy_threads >= 32 / 6, "the healthy webhook got {healthy_threads} threads");
        assert!(queues.active.values().sum::<usize>() <= 32);
    }

    #[test]
    fn a_410_stops_the_endpoint_until_its_jobs_are_taken_back() {
        let mut queues: Queues<u32> = Queues::new();
        (0..3).for_each(|n| queues.queue(job(1, n)));
        queues.queue(job(2, 10));
        let first = queues.next_job(1, 32).unwrap();
        let gone = Outcome {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            http_status: Some(GONE),
            response_body: None,
            error: None,
            retry_after: None,
        };
        queues.pause_if_asked(first.webhook_id, &gone);
        queues.finished(first.webhook_id, Duration::ZERO);
        assert_eq!(queues.next_job(1, 32).map(|j| j.tag), Some(10), "webhook 1 gets no next push");
        assert!(queues.next_job(1, 32).is_none());
        assert_eq!(queues.take_back(1), vec![1, 2]);
        assert_eq!(queues.next_pause_end(Instant::now()), None, "nothing left to wait for");
        queues.queue(job(1, 3));
        assert_eq!(queues.next_job(1, 32).map(|j| j.tag), Some(3), "enabled again, it gets new claims");
    }

    #[test]
    fn a_429_pauses_the_whole_endpoint_for_its_retry_after() {
        let mut queues: Queues<u32> = Queues::new();
        (0..3).for_each(|n| queues.queue(job(1, n)));
        (10..12).for_each(|n| queues.queue(job(2, n)));
        let first = queues.next_job(8, 32).unwrap();
        let busy = Outcome {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            http_status: Some(429),
            response_body: None,
            error: None,
            retry_after: Some(Duration::from_secs(60)),
        };
        queues.pause_if_asked(first.webhook_id, &busy);
        queues.finished(first.webhook_id, Duration::ZERO);
        let rest: Vec<i64> = std::iter::from_fn(|| queues.next_job(8, 32)).map(|j| j.webhook_id).collect();
        assert_eq!(rest, vec![2, 2], "webhook 1 waits, webhook 2 goes on");
        let pause = queues.next_pause_end(Instant::now()).unwrap().duration_since(Instant::now());
        assert!(pause > Duration::from_secs(59) && pause <= Duration::from_secs(60), "{pause:?}");

        queues.paused.insert(1, Instant::now());
        assert_eq!(queues.next_pause_end(Instant::now()), None, "a pause that is over is no reason to wait");
        assert_eq!(queues.next_job(8, 32).map(|j| j.tag), Some(1), "the pause over, the endpoint gets its jobs");
        let huge = Outcome { http_status: Some(503), retry_after: Some(Duration::from_secs(1 << 40)), ..busy };
        queues.pause_if_asked(1, &huge);
        assert!(queues.next_pause_end(Instant::now()).unwrap() <= Instant::now() + MAX_PAUSE);
    }

    #[test]
    fn a_panic_while_sending_is_a_failed_attempt() {
        let outcome = attempt(|| panic!("boom"));
        assert!(!outcome.succeeded());
        assert_eq!(outcome.error.as_deref(), Some("billhook's HTTP client failed: boom"));
    }

    #[test]
    fn a_webhooks_own_cap_and_rate_limit_apply_to_it_alone() {
        let mut queues: Queues<u32> = Queues::new();
        let capped = Limits { max_in_flight: Some(1), rate: None };
        let limited = Limits { max_in_flight: None, rate: Some(RateLimit::new(5.0)) };
        for n in 0..3 {
            queues.queue(Job { limits: capped, ..job(1, n) });
            queues.queue(Job { limits: limited, ..job(2, n) });
            queues.queue(job(3, n));
        }
        let taken: Vec<i64> = std::iter::from_fn(|| queues.next_job(8, 32)).map(|j| j.webhook_id).collect();
        assert_eq!(taken, vec![1, 2, 3, 3], "one in flight for 1, one per 200 ms for 2, the probing two for 3");
        let wait = queues.next_start(Instant::now()).unwrap().duration_since(Instant::now());
        assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200), "{wait:?}");
        queues.finished(2, Duration::from_millis(1));
        assert!(queues.next_job(8, 32).is_none(), "a finished push is no reason to send before the rate lets");
        queues.buckets.insert(2, Instant::now());
        assert_eq!(queues.next_job(8, 32).map(|j| j.webhook_id), Some(2), "its time has come");
    }

    #[test]
    fn a_webhook_alone_uses_its_whole_cap_once_it_answers_fast() {
        let mut queues: Queues<u32> = Queues::new();
        (0..20).for_each(|n| queues.queue(job(1, n)));
        assert_eq!(std::iter::from_fn(|| queues.next_job(8, 32)).count(), PROBING_THREADS);
        queues.finished(1, Duration::from_millis(2));
        assert_eq!(std::iter::from_fn(|| queues.next_job(8, 32)).count(), 7, "8 in flight");
        queues.active.clear();
        queues.finished(1, Duration::from_secs(30));
        queues.finished(1, Duration::from_secs(30));
        assert_eq!(std::iter::from_fn(|| queues.next_job(8, 32)).count(), PROBING_THREADS, "slow again");
    }
}
