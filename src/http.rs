//! Pushes over HTTP with ureq, from plain threads. No Postgres calls here: the worker's main thread
//! submits jobs and collects outcomes; a byte on a socket pair wakes it when an outcome is ready.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::retry::parse_retry_after;
use crate::sign::signature_header;
use crate::target::is_private_address;

pub const USER_AGENT: &str = concat!("billhook/", env!("CARGO_PKG_VERSION"));

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_body: usize,
    pub allow_private_targets: bool,
    pub concurrency: usize,
    pub max_in_flight_per_webhook: usize,
}

/// One signed POST. The signature is made when the request leaves, so a retry carries a fresh
/// `webhook-timestamp` under the same `webhook-id` (the idempotency key).
pub struct Push {
    pub url: String,
    pub body: Vec<u8>,
    pub idempotency_key: String,
    pub signing_keys: Vec<Vec<u8>>,
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
        write!(
            f,
            "refused to connect to private address {} (billhook.allow_private_targets is off)",
            self.0
        )
    }
}

impl std::error::Error for RefusedTarget {}

/// Resolves like ureq does, then refuses the host if any of its addresses is private: checking the
/// addresses actually connected to (not the URL's text) also stops DNS names that point inside.
#[derive(Debug)]
struct PolicyResolver {
    allow_private: bool,
    inner: DefaultResolver,
}

impl Resolver for PolicyResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let addresses = self.inner.resolve(uri, config, timeout)?;
        if !self.allow_private {
            if let Some(private) = addresses.iter().find(|a| is_private_address(a.ip())) {
                return Err(ureq::Error::Other(Box::new(RefusedTarget(private.ip()))));
            }
        }
        Ok(addresses)
    }
}

pub fn agent(settings: &HttpSettings) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(settings.request_timeout))
        .timeout_connect(Some(settings.connect_timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent(USER_AGENT)
        .max_idle_connections(settings.concurrency.max(8) * 4)
        .max_idle_connections_per_host(settings.concurrency.max(8))
        .build();
    let resolver = PolicyResolver { allow_private: settings.allow_private_targets, inner: DefaultResolver::default() };
    ureq::Agent::with_parts(config, DefaultConnector::default(), resolver)
}

pub fn post(agent: &ureq::Agent, push: &Push, max_response_body: usize) -> Outcome {
    let started_at = SystemTime::now();
    let clock = Instant::now();
    let timestamp = started_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let signature = signature_header(&push.idempotency_key, timestamp, &push.body, &push.signing_keys);
    let sent = agent
        .post(&push.url)
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
            if matches!(status, 429 | 503) {
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
        other => other.to_string(),
    }
}

/// A job for the senders: a push, the webhook it goes to, and the caller's tag that comes back
/// with its outcome.
pub struct Job<T> {
    pub webhook_id: i64,
    pub tag: T,
    pub push: Push,
}

pub struct Done<T> {
    pub tag: T,
    pub outcome: Outcome,
}

/// Sender threads sharing one agent (and its keep-alive connections). The threads take jobs
/// themselves, round-robin over webhooks, never more than `max_in_flight_per_webhook` at once for
/// one webhook: a slow endpoint keeps at most that many threads, and the worker's main thread is
/// not on the path from one push to the next.
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

struct Queues<T> {
    waiting: HashMap<i64, VecDeque<Job<T>>>,
    /// Webhooks with waiting jobs, in the order they get a turn.
    turns: VecDeque<i64>,
    active: HashMap<i64, usize>,
    done: Vec<Done<T>>,
    stopped: bool,
}

impl<T> Queues<T> {
    fn next_job(&mut self, cap: usize) -> Option<Job<T>> {
        for _ in 0..self.turns.len() {
            let webhook = self.turns.pop_front()?;
            let active = self.active.entry(webhook).or_default();
            if *active >= cap {
                self.turns.push_back(webhook);
                continue;
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

    fn finished(&mut self, webhook: i64) {
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
        let shared = Arc::new(Shared {
            state: Mutex::new(Queues {
                waiting: HashMap::new(),
                turns: VecDeque::new(),
                active: HashMap::new(),
                done: Vec::new(),
                stopped: false,
            }),
            work: Condvar::new(),
        });
        let (wake_reader, wake_writer) = UnixStream::pair()?;
        wake_reader.set_nonblocking(true)?;
        wake_writer.set_nonblocking(true)?;
        let agent = agent(&settings);
        for n in 0..settings.concurrency {
            let (shared, agent, settings) = (shared.clone(), agent.clone(), settings.clone());
            let mut wake = wake_writer.try_clone()?;
            std::thread::Builder::new()
                .name(format!("billhook-sender-{n}"))
                .spawn(move || send_jobs(&shared, &agent, &settings, &mut wake))?;
        }
        Ok(SenderPool { settings, shared, wake_reader })
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    pub fn submit(&self, jobs: impl IntoIterator<Item = Job<T>>) {
        let mut state = self.shared.state.lock().expect("sender state");
        for job in jobs {
            let webhook = job.webhook_id;
            let queue = state.waiting.entry(webhook).or_default();
            if queue.is_empty() {
                state.turns.push_back(webhook);
            }
            state.waiting.get_mut(&webhook).expect("just inserted").push_back(job);
        }
        drop(state);
        self.shared.work.notify_all();
    }

    /// Drops the jobs no sender has started (their deliveries' leases bring them back); returns how
    /// many.
    pub fn discard_waiting(&self) -> usize {
        let mut state = self.shared.state.lock().expect("sender state");
        state.turns.clear();
        state.waiting.drain().map(|(_, queue)| queue.len()).sum()
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

fn send_jobs<T>(shared: &Shared<T>, agent: &ureq::Agent, settings: &HttpSettings, wake: &mut UnixStream) {
    let mut state = shared.state.lock().expect("sender state");
    loop {
        if state.stopped {
            return;
        }
        let Some(job) = state.next_job(settings.max_in_flight_per_webhook) else {
            state = shared.work.wait(state).expect("sender state");
            continue;
        };
        drop(state);
        let outcome = post(agent, &job.push, settings.max_response_body);
        state = shared.state.lock().expect("sender state");
        state.finished(job.webhook_id);
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
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
                .unwrap();
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            (&stream).write_all(response.as_bytes()).unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        (url, handle)
    }

    fn push(url: String) -> Push {
        Push { url, body: br#"{"a":1}"#.to_vec(), idempotency_key: "key-1".into(), signing_keys: vec![b"k".to_vec()] }
    }

    #[test]
    fn posts_signed_json_and_truncates_the_response() {
        let (url, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
        let outcome = post(&agent(&settings(true)), &push(url), 5);
        let (head, body) = server.join().unwrap();
        assert!(head.starts_with("POST /hook HTTP/1.1\r\n"), "{head}");
        let lower = head.to_ascii_lowercase();
        for expected in ["content-type: application/json", "idempotency-key: key-1", "webhook-id: key-1", "user-agent: billhook/"] {
            assert!(lower.contains(expected), "{expected} in {head}");
        }
        let timestamp: i64 = lower.lines().find_map(|l| l.strip_prefix("webhook-timestamp: ")).unwrap().trim().parse().unwrap();
        let signature = head.lines().find_map(|l| l.strip_prefix("webhook-signature: ")).unwrap().trim().to_string();
        assert_eq!(signature, signature_header("key-1", timestamp, br#"{"a":1}"#, &[b"k".to_vec()]));
        assert_eq!(body, r#"{"a":1}"#);
        assert!(outcome.succeeded());
        assert_eq!((outcome.http_status, outcome.response_body.as_deref(), outcome.error), (Some(200), Some("hello"), None));
    }

    #[test]
    fn redirects_are_not_followed_and_retry_after_is_read() {
        let (url, server) = serve_once("HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n");
        let outcome = post(&agent(&settings(true)), &push(url), 100);
        server.join().unwrap();
        assert_eq!(outcome.http_status, Some(302));
        assert!(!outcome.succeeded());

        let (url, server) = serve_once("HTTP/1.1 503 Busy\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n");
        let outcome = post(&agent(&settings(true)), &push(url), 100);
        server.join().unwrap();
        assert_eq!((outcome.http_status, outcome.retry_after), (Some(503), Some(Duration::from_secs(120))));
    }

    #[test]
    fn private_targets_are_refused_unless_allowed() {
        let outcome = post(&agent(&settings(false)), &push("http://127.0.0.1:9/hook".into()), 100);
        assert_eq!(outcome.http_status, None);
        let error = outcome.error.unwrap();
        assert!(error.contains("refused to connect to private address 127.0.0.1"), "{error}");
    }

    #[test]
    fn connection_errors_are_failed_attempts() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let outcome = post(&agent(&settings(true)), &push(format!("http://127.0.0.1:{port}/")), 100);
        assert!(!outcome.succeeded());
        assert!(outcome.error.is_some());
    }

    #[test]
    fn pool_returns_every_outcome_with_its_tag() {
        let pool = SenderPool::start(settings(false)).unwrap();
        pool.submit((0..5).map(|n| Job { webhook_id: n % 2, tag: n, push: push("http://10.0.0.1/".into()) }));
        let mut tags = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tags.len() < 5 && Instant::now() < deadline {
            tags.extend(pool.take_done().into_iter().map(|d| d.tag));
            std::thread::sleep(Duration::from_millis(5));
        }
        tags.sort();
        assert_eq!(tags, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_webhook_never_has_more_than_its_cap_in_flight() {
        let mut queues: Queues<u32> =
            Queues { waiting: HashMap::new(), turns: VecDeque::new(), active: HashMap::new(), done: Vec::new(), stopped: false };
        let job = |webhook_id, tag| Job { webhook_id, tag, push: push("http://x/".into()) };
        queues.waiting.insert(1, (0..5).map(|n| job(1, n)).collect());
        queues.waiting.insert(2, (10..12).map(|n| job(2, n)).collect());
        queues.turns.extend([1, 2]);
        let taken: Vec<(i64, u32)> = std::iter::from_fn(|| queues.next_job(2)).map(|j| (j.webhook_id, j.tag)).collect();
        assert_eq!(taken, vec![(1, 0), (2, 10), (1, 1), (2, 11)], "round-robin, two each");
        queues.finished(1);
        assert_eq!(queues.next_job(2).map(|j| j.tag), Some(2), "a finished push frees a slot");
        assert!(queues.next_job(2).is_none());
    }
}
