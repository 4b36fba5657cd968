//! One push over HTTP with ureq: the request, its signature headers, the address policy applied to
//! every resolved address (url_policy.rs), TLS roots, and what came back. No Postgres calls; the
//! sender threads (senders.rs) and the registration check (verify_endpoint) call it.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ureq::tls::{parse_pem, Certificate, PemItem, RootCerts, TlsConfig};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport};

use super::push::sign::signature_header;
use super::push::Push;
use super::retry::{asks_to_slow_down, parse_retry_after};
use super::url_policy::is_private_address;

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
    pub(super) fn failed(started_at: SystemTime, error: String) -> Outcome {
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
    ureq::Agent::with_parts(config, DefaultConnector::default().chain(OneWrite), resolver)
}

/// Sends a request's head and body in one write: ureq transmits them one after the other, which
/// on a keep-alive connection costs a segment, a wake-up of the receiver and a system call more
/// per push. The first transmit of a request (its head) is held back until the next (sent
/// together, or one after the other if they do not fit in the output buffer) or until ureq waits
/// for input (sent first). Anything later goes out at once.
#[derive(Debug)]
struct OneWrite;

impl Connector<Box<dyn Transport>> for OneWrite {
    type Out = OneWriteTransport;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> Result<Option<OneWriteTransport>, ureq::Error> {
        Ok(chained.map(|inner| OneWriteTransport {
            inner,
            head: Vec::new(),
            at_request_start: true,
            broken: false,
            probe_due: true,
        }))
    }
}

#[derive(Debug)]
struct OneWriteTransport {
    inner: Box<dyn Transport>,
    /// A request's head, held back.
    head: Vec<u8>,
    /// Whether nothing was transmitted since ureq last waited for input: the next transmit is a
    /// request's head.
    at_request_start: bool,
    /// A write failed: what was sent of the request is unknown, so nothing more may be.
    broken: bool,
    /// Whether the next is_open is to probe the socket (see is_open).
    probe_due: bool,
}

impl OneWriteTransport {
    fn transmit(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        // ureq takes a timeout while it waits for a 100 Continue as no 100 coming, and goes on: a
        // head written part-way must not pass for that.
        let reason = match timeout.reason {
            ureq::Timeout::Await100 => ureq::Timeout::SendRequest,
            reason => reason,
        };
        let timeout = NextTimeout { reason, ..timeout };
        let sent = self.inner.transmit_output(amount, timeout);
        self.broken |= sent.is_err();
        sent
    }

    fn send_head(&mut self, timeout: NextTimeout) -> Result<(), ureq::Error> {
        if self.head.is_empty() {
            return Ok(());
        }
        // The head came from the output buffer: it fits there again.
        let head = std::mem::take(&mut self.head);
        self.inner.buffers().output()[..head.len()].copy_from_slice(&head);
        self.transmit(head.len(), timeout)
    }

    fn refuse_if_broken(&self) -> Result<(), ureq::Error> {
        if self.broken {
            return Err(ureq::Error::Io(std::io::ErrorKind::BrokenPipe.into()));
        }
        Ok(())
    }
}

impl Transport for OneWriteTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.refuse_if_broken()?;
        if std::mem::take(&mut self.at_request_start) {
            self.head.clear();
            self.head.extend_from_slice(&self.inner.buffers().output()[..amount]);
            return Ok(());
        }
        let held = self.head.len();
        let output = self.inner.buffers().output();
        if held > 0 && held + amount <= output.len() {
            output.copy_within(..amount, held);
            output[..held].copy_from_slice(&self.head);
            self.head.clear();
            return self.transmit(held + amount, timeout);
        }
        if held > 0 {
            let body = output[..amount].to_vec();
            self.send_head(timeout)?;
            self.inner.buffers().output()[..amount].copy_from_slice(&body);
        }
        self.transmit(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.refuse_if_broken()?;
        self.send_head(timeout)?;
        self.at_request_start = true;
        self.probe_due = false;
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        // ureq 3.5 asks as it puts a kept-alive connection back in its pool after a response
        // (Connection::reuse) and again as it takes it for the next push (Pool::get). The socket's
        // probe (three system calls) is made the second time only: it finds then whatever the first
        // would have found (bytes after the response, a close), and what came since. A connection
        // the first probe would have dropped waits in the pool until then, within its limits.
        let probe = std::mem::replace(&mut self.probe_due, true);
        // A head still held means a request ended before it was sent (a response read early, which
        // only Expect: 100-continue allows): the connection is out of step for another push.
        !self.broken && self.head.is_empty() && (!probe || self.inner.is_open())
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
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
            // A byte past what is kept: a body of exactly that length is then read to its end, and
            // only a body read to its end gives its connection back to the pool.
            let mut body = Vec::new();
            let read = response
                .body_mut()
                .as_reader()
                .take((max_response_body as u64).saturating_add(1))
                .read_to_end(&mut body);
            body.truncate(max_response_body);
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::delivering::push::sign::SigningKey;
    use std::io::{BufRead, Write};
    use std::net::TcpListener;
    use std::sync::Arc;

    pub(in crate::delivering) fn settings(allow_private_targets: bool) -> HttpSettings {
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

    /// A transport that records each write it is asked for, and fails them once told to.
    #[derive(Debug)]
    struct Recording {
        buffers: ureq::unversioned::transport::LazyBuffers,
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Transport for Recording {
        fn buffers(&mut self) -> &mut dyn Buffers {
            &mut self.buffers
        }

        fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(ureq::Error::Timeout(timeout.reason));
            }
            let written = self.buffers.output()[..amount].to_vec();
            self.writes.lock().unwrap().push(written);
            Ok(())
        }

        fn await_input(&mut self, _: NextTimeout) -> Result<bool, ureq::Error> {
            Ok(false)
        }

        fn is_open(&mut self) -> bool {
            self.writes.lock().unwrap().push(b"(probe)".to_vec());
            true
        }
    }

    /// A OneWrite transport over a Recording one with an output buffer of 16 bytes; its writes and
    /// the switch that makes them fail.
    #[allow(clippy::type_complexity)]
    fn one_write() -> (OneWriteTransport, Arc<Mutex<Vec<Vec<u8>>>>, Arc<std::sync::atomic::AtomicBool>) {
        let writes = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let recording = Recording {
            buffers: ureq::unversioned::transport::LazyBuffers::new(64, 16),
            writes: writes.clone(),
            failing: failing.clone(),
        };
        let transport = OneWriteTransport {
            inner: Box::new(recording),
            head: Vec::new(),
            at_request_start: true,
            broken: false,
            probe_due: true,
        };
        (transport, writes, failing)
    }

    /// Puts `bytes` in the output buffer and has `transport` transmit them, as ureq does.
    fn transmit(transport: &mut OneWriteTransport, bytes: &[u8]) -> Result<(), ureq::Error> {
        transport.buffers().output()[..bytes.len()].copy_from_slice(bytes);
        transport.transmit_output(bytes.len(), NextTimeout::default())
    }

    fn texts(writes: &Mutex<Vec<Vec<u8>>>) -> Vec<String> {
        writes.lock().unwrap().iter().map(|w| String::from_utf8(w.clone()).unwrap()).collect()
    }

    #[test]
    fn a_head_and_its_body_go_out_in_one_write_and_in_order() {
        let (mut transport, writes, _) = one_write();
        transmit(&mut transport, b"HEAD 1\r\n").unwrap();
        assert!(texts(&writes).is_empty(), "the head waits for its body");
        transmit(&mut transport, b"body 1").unwrap();
        transport.await_input(NextTimeout::default()).unwrap();
        // Exactly the buffer's size together.
        transmit(&mut transport, b"HEAD 2\r\n").unwrap();
        transmit(&mut transport, b"body 2!!").unwrap();
        transport.await_input(NextTimeout::default()).unwrap();
        // Longer than the buffer together, and a body in two parts: one after the other, in order.
        transmit(&mut transport, b"HEAD 3\r\n").unwrap();
        transmit(&mut transport, b"body 3, part one").unwrap();
        transmit(&mut transport, b"part two").unwrap();
        assert_eq!(texts(&writes).len(), 5, "nothing after a head is held");
        transport.await_input(NextTimeout::default()).unwrap();
        // No body: the head goes when ureq waits for the response; until then the connection is not
        // one to reuse.
        transmit(&mut transport, b"HEAD 4\r\n").unwrap();
        assert!(!transport.is_open());
        transport.await_input(NextTimeout::default()).unwrap();
        assert!(transport.is_open());
        // Nothing transmitted first: nothing held.
        transmit(&mut transport, b"").unwrap();
        transmit(&mut transport, b"HEAD 5\r\n").unwrap();
        assert_eq!(
            texts(&writes),
            [
                "HEAD 1\r\nbody 1",
                "HEAD 2\r\nbody 2!!",
                "HEAD 3\r\n",
                "body 3, part one",
                "part two",
                "HEAD 4\r\n",
                "HEAD 5\r\n"
            ]
        );
    }

    #[test]
    fn a_pooled_connection_is_probed_once_per_push_as_it_is_taken() {
        let (mut transport, writes, _) = one_write();
        transmit(&mut transport, b"HEAD\r\n").unwrap();
        transmit(&mut transport, b"body").unwrap();
        transport.await_input(NextTimeout::default()).unwrap();
        assert!(transport.is_open(), "put back in the pool");
        assert!(transport.is_open(), "taken out for the next push");
        assert!(transport.is_open(), "asked again without a response read since");
        assert_eq!(texts(&writes), ["HEAD\r\nbody", "(probe)", "(probe)"]);
    }

    /// Reads one push (head and body) from `stream`.
    fn read_push(stream: &std::net::TcpStream) {
        let mut reader = std::io::BufReader::new(stream);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                break;
            }
        }
        let mut body = [0u8; 7];
        reader.read_exact(&mut body).unwrap();
    }

    /// A keep-alive receiver that, after its first response (200) and once the push's outcome is
    /// back, does `after_response` to that connection and signals; a second connection gets 201.
    /// Returns the second push's outcome.
    fn second_push_after(after_response: fn(&std::net::TcpStream)) -> Outcome {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (first_back, first_back_seen) = std::sync::mpsc::channel();
        let (done, done_seen) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let (first, _) = listener.accept().unwrap();
            read_push(&first);
            (&first).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
            first_back_seen.recv().unwrap();
            after_response(&first);
            done.send(()).unwrap();
            let (second, _) = listener.accept().unwrap();
            read_push(&second);
            (&second).write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n").unwrap();
            // The first connection stays open until the second push is answered.
            drop(first);
        });
        let client = Client::new(&settings(true));
        assert_eq!(client.send(&push(url.clone())).http_status, Some(200));
        first_back.send(()).unwrap();
        done_seen.recv().unwrap();
        // Not joined: a push that went on the first connection leaves the server waiting for a
        // second one, and the test is to fail, not hang.
        drop(server);
        client.send(&push(url))
    }

    /// A response whose body is exactly as long as what is kept of it is read to its end: the
    /// connection goes back to the pool and carries the next push.
    #[test]
    fn a_response_body_exactly_as_long_as_what_is_kept_leaves_its_connection_pooled() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let (first, _) = listener.accept().unwrap();
            read_push(&first);
            // settings() keeps 5 bytes of a response.
            (&first).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n12345").unwrap();
            first.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let reused = matches!(first.peek(&mut [0u8; 1]), Ok(1));
            let next = if reused { first } else { listener.accept().unwrap().0 };
            read_push(&next);
            (&next).write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n").unwrap();
            reused
        });
        let client = Client::new(&settings(true));
        let first = client.send(&push(url.clone()));
        assert_eq!((first.http_status, first.response_body.as_deref()), (Some(200), Some("12345")));
        assert_eq!(client.send(&push(url)).http_status, Some(201));
        assert!(server.join().unwrap(), "the second push came on a new connection");
    }

    /// Closed without a word after its response, as an idle timeout would: the next push goes on a
    /// new connection.
    #[test]
    fn a_connection_closed_after_its_response_is_not_used_again() {
        let second = second_push_after(|first| first.shutdown(std::net::Shutdown::Both).unwrap());
        assert_eq!((second.http_status, second.error), (Some(201), None));
    }

    /// Bytes after a response (a receiver out of step) are never read as the next push's answer.
    #[test]
    fn a_connection_with_bytes_after_its_response_is_not_used_again() {
        let second = second_push_after(|mut first| {
            first.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(50));
        });
        assert_eq!((second.http_status, second.error), (Some(201), None));
    }

    #[test]
    fn after_a_failed_write_nothing_more_is_sent_and_the_connection_is_not_reused() {
        let (mut transport, writes, failing) = one_write();
        transmit(&mut transport, b"HEAD\r\n").unwrap();
        failing.store(true, std::sync::atomic::Ordering::Relaxed);
        // The head written while ureq waits for a 100 Continue: its timeout is the head's, which
        // ureq does not take for a 100 that never came.
        let awaiting_100 = NextTimeout { reason: ureq::Timeout::Await100, ..NextTimeout::default() };
        assert!(matches!(transport.await_input(awaiting_100), Err(ureq::Error::Timeout(ureq::Timeout::SendRequest))));
        failing.store(false, std::sync::atomic::Ordering::Relaxed);
        assert!(transmit(&mut transport, b"more").is_err());
        assert!(transport.await_input(NextTimeout::default()).is_err());
        assert!(!transport.is_open());
        assert!(texts(&writes).is_empty());
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

    pub(in crate::delivering) fn push(url: String) -> Push {
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
}
