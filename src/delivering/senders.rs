//! The sender threads and how they share out pushes: per webhook a queue, round-robin over
//! webhooks, each webhook's in-flight cap and rate limit, pauses an endpoint asks for (429/503 with
//! Retry-After, 410 Gone), and a share of threads kept free of slow endpoints. No Postgres calls:
//! the worker's main thread submits jobs and collects outcomes; a byte on a socket pair wakes it
//! when an outcome is ready. The HTTP request itself is http_client.rs's.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::http_client::{Client, HttpSettings, Outcome};
use super::push::Push;
use super::rate_limit::RateLimit;
use super::retry::{asks_to_slow_down, GONE};

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

/// What next_job weighs a webhook against: its share of threads, the threads idle, the time.
struct Occupancy {
    share: usize,
    idle: usize,
    now: Instant,
}

enum Admission {
    NotNow,
    /// For a rate-limited webhook, when its bucket is full again after this push.
    Now {
        bucket_full_at: Option<Instant>,
    },
}

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
    /// Senders waiting for a job (woken one at a time: wants_a_sender), and the soonest time one
    /// of them is known to wake by itself (None: none known).
    idle_senders: usize,
    idle_wakes_at: Option<Instant>,
    /// A wake-up of the worker that could not be written.
    wake_owed: bool,
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
            idle_senders: 0,
            idle_wakes_at: None,
            wake_owed: false,
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
        let occupancy = self.occupancy(threads);
        for _ in 0..self.turns.len() {
            let webhook = self.turns.pop_front()?;
            let Admission::Now { bucket_full_at } = self.admission(webhook, cap, &occupancy) else {
                self.turns.push_back(webhook);
                continue;
            };
            if let Some(full_at) = bucket_full_at {
                self.buckets.insert(webhook, full_at);
            }
            let queue = self.waiting.get_mut(&webhook)?;
            let job = queue.pop_front()?;
            *self.active.entry(webhook).or_default() += 1;
            if queue.is_empty() {
                self.waiting.remove(&webhook);
            } else {
                self.turns.push_back(webhook);
            }
            return Some(job);
        }
        None
    }

    /// Whether a sender waiting for work is to be woken: when a waiting job may start now (the
    /// sender that takes it wakes the next in turn, so jobs queued together start together), or
    /// sooner than any sleeping sender wakes by itself (a pause or rate limit brought by the last
    /// push or take may end first). Not otherwise: threads idle behind a webhook's cap would wake
    /// to find nothing. A push that finished needs no wake-up of its own: its slot goes to its
    /// sender's next_job, the same for every thread.
    fn wants_a_sender(&mut self, cap: usize, threads: usize) -> bool {
        let sooner = |queues: &Self| {
            queues.next_start(Instant::now()).is_some_and(|start| queues.idle_wakes_at.is_none_or(|at| start < at))
        };
        self.idle_senders > 0 && (self.any_startable(cap, threads) || sooner(self))
    }

    /// Whether a waiting job may start now.
    fn any_startable(&mut self, cap: usize, threads: usize) -> bool {
        let occupancy = self.occupancy(threads);
        self.turns.iter().any(|webhook| matches!(self.admission(*webhook, cap, &occupancy), Admission::Now { .. }))
    }

    /// The threads' occupancy a choice of jobs is made with; pauses that ended are forgotten.
    fn occupancy(&mut self, threads: usize) -> Occupancy {
        let share = self.share(threads);
        let idle = threads.saturating_sub(self.active.values().sum());
        let now = Instant::now();
        self.paused.retain(|_, until| *until > now);
        Occupancy { share, idle, now }
    }

    /// Whether `webhook` may have one more push in flight now.
    fn admission(&self, webhook: i64, cap: usize, occupancy: &Occupancy) -> Admission {
        let limits = self.limits.get(&webhook).copied().unwrap_or_default();
        let cap = limits.max_in_flight.unwrap_or(cap);
        let proven = self.pace.get(&webhook).is_some_and(|pace| *pace <= SLOW_PUSH);
        let cap = if proven { cap } else { cap.min(PROBING_THREADS) };
        let active = self.active.get(&webhook).copied().unwrap_or_default();
        if active >= cap
            || (active >= occupancy.share && occupancy.idle <= occupancy.share)
            || self.paused.contains_key(&webhook)
        {
            return Admission::NotNow;
        }
        match limits.rate.map(|rate| rate.admit(self.buckets.get(&webhook).copied(), occupancy.now)) {
            Some(Err(_)) => Admission::NotNow,
            Some(Ok(full_at)) => Admission::Now { bucket_full_at: Some(full_at) },
            None => Admission::Now { bucket_full_at: None },
        }
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
        let wake = state.wants_a_sender(self.settings.max_in_flight_per_webhook, self.settings.concurrency);
        drop(state);
        if wake {
            self.shared.work.notify_one();
        }
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
            if state.wake_owed {
                state.wake_owed = matches!(wake.write(&[1]), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock);
            }
            // Jobs of a paused or rate-limited endpoint wait for their time.
            let now = Instant::now();
            let next_start = state.next_start(now);
            state.idle_senders += 1;
            if let Some(end) = next_start {
                state.idle_wakes_at = Some(state.idle_wakes_at.map_or(end, |at| at.min(end)));
            }
            state = match next_start {
                Some(end) => shared.work.wait_timeout(state, end.duration_since(now)).expect("sender state").0,
                None => shared.work.wait(state).expect("sender state"),
            };
            state.idle_senders -= 1;
            // The other sleepers' times are forgotten: that costs a wake-up too many at most.
            state.idle_wakes_at = None;
            continue;
        };
        let wake_a_sender = state.wants_a_sender(settings.max_in_flight_per_webhook, settings.concurrency);
        drop(state);
        if wake_a_sender {
            shared.work.notify_one();
        }
        let outcome = attempt(|| client.send(&job.push));
        state = shared.state.lock().expect("sender state");
        state.pause_if_asked(job.webhook_id, &outcome);
        state.finished(job.webhook_id, outcome.duration);
        state.done.push(Done { tag: job.tag, outcome });
        // One wake-up per batch of outcomes: take_done reads the socket before it takes the
        // outcomes, so outcomes found waiting after a take were pushed after that read, the first of
        // them with a wake-up of its own. A full socket buffer already holds a wake-up; a write
        // that failed otherwise is tried again with the next outcome.
        if state.done.len() == 1 || state.wake_owed {
            state.wake_owed = matches!(wake.write(&[1]), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivering::http_client::tests::{push, settings};

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

    /// As the worker waits: for the socket, then takes what is done. Outcomes come back in bursts
    /// (refused at once by the address policy); none may wait without a wake-up.
    #[test]
    fn every_outcome_comes_with_a_wake_up() {
        let pool = SenderPool::start(settings(false)).unwrap();
        let jobs = 300;
        let mut taken = 0;
        for burst in 0..3 {
            pool.submit((0..jobs / 3).map(|n| Job {
                webhook_id: i64::from(n % 3),
                limits: Limits::default(),
                tag: burst * 1000 + n,
                push: push("http://10.0.0.1/".into()),
            }));
            while taken < (burst + 1) * jobs / 3 {
                let mut readable = libc::pollfd { fd: pool.wake_fd(), events: libc::POLLIN, revents: 0 };
                let ready = unsafe { libc::poll(&mut readable, 1, 2000) };
                assert_eq!(ready, 1, "{taken} outcomes taken, the rest came without a wake-up");
                taken += pool.take_done().len() as u32;
            }
        }
        assert_eq!(taken, jobs);
    }

    /// An endpoint at 127.0.0.1 answering each request (read whole) with the next of `answers`,
    /// after `delay`, on a connection of its own; None: it keeps the connection and never answers.
    fn endpoint(answers: Vec<Option<&'static str>>, delay: Duration) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            for (stream, answer) in listener.incoming().zip(answers) {
                let mut stream = stream.unwrap();
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                while !String::from_utf8_lossy(&request).contains("{\"a\":1}") {
                    match std::io::Read::read(&mut stream, &mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(read) => request.extend_from_slice(&buffer[..read]),
                    }
                }
                std::thread::sleep(delay);
                match answer {
                    Some(answer) => std::io::Write::write_all(&mut stream, answer.as_bytes()).unwrap(),
                    None => kept.push(stream),
                }
            }
            std::thread::sleep(Duration::from_secs(30));
        });
        url
    }

    /// A webhook paused by its 429 while every other sender is busy with endpoints that never
    /// answer, or asleep: its next push leaves when the pause ends, not when the others time out.
    #[test]
    fn a_pause_that_ends_while_the_other_senders_are_busy_or_asleep_is_kept() {
        let settings = HttpSettings {
            request_timeout: Duration::from_secs(6),
            ..crate::delivering::http_client::tests::settings(true)
        };
        let slow_down =
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let fine = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let paced = endpoint(vec![Some(slow_down), Some(fine), Some(fine)], Duration::from_millis(100));
        let (hanging, also_hanging) =
            (endpoint(vec![None; 4], Duration::ZERO), endpoint(vec![None; 4], Duration::ZERO));
        let pool = SenderPool::start(settings).unwrap();
        let to = |webhook_id: i64, tag: u32, url: &str| Job {
            webhook_id,
            limits: Limits::default(),
            tag,
            push: push(url.to_string()),
        };
        let started = Instant::now();
        pool.submit([
            to(1, 0, &paced),
            to(1, 1, &paced),
            to(2, 10, &hanging),
            to(3, 20, &also_hanging),
            to(3, 21, &also_hanging),
        ]);
        let mut done: Vec<(u32, Option<u16>)> = Vec::new();
        while !done.iter().any(|(tag, _)| *tag == 1) && started.elapsed() < Duration::from_secs(10) {
            done.extend(pool.take_done().into_iter().map(|d| (d.tag, d.outcome.http_status)));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(done.first(), Some(&(0, Some(429))), "{done:?}");
        assert!(done.contains(&(1, Some(200))), "{done:?}");
        assert!(started.elapsed() < Duration::from_millis(2500), "the second push left after {:?}", started.elapsed());
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

    /// An endpoint's 410 Gone.
    fn gone() -> Outcome {
        Outcome {
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            http_status: Some(GONE),
            response_body: None,
            error: None,
            retry_after: None,
        }
    }

    #[test]
    fn a_webhook_refused_its_turn_takes_no_share_once_its_jobs_are_taken_back() {
        let mut queues: Queues<u32> = Queues::new();
        (0..2).for_each(|n| queues.queue(job(1, n)));
        let first = queues.next_job(8, 32).unwrap();
        let gone = gone();
        queues.pause_if_asked(first.webhook_id, &gone);
        queues.finished(1, Duration::ZERO);
        assert!(queues.next_job(8, 32).is_none(), "refused while paused");
        assert_eq!(queues.take_back(1), vec![1]);
        queues.last_busy.insert(1, Instant::now() - RECENTLY_BUSY);
        assert_eq!(queues.share(32), 32, "webhook 1, gone, no longer counts as busy");
    }

    /// The worker is woken once for the outcomes that came in since it last took them, not once for
    /// each.
    #[test]
    fn outcomes_of_one_batch_wake_the_worker_once() {
        let pool = SenderPool::start(settings(false)).unwrap();
        pool.submit((0..20).map(|n| Job {
            webhook_id: i64::from(n % 3),
            limits: Limits::default(),
            tag: n,
            push: push("http://10.0.0.1/".into()),
        }));
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.shared.state.lock().unwrap().done.len() < 20 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut peek = [0u8; 64];
        let queued = unsafe {
            libc::recv(pool.wake_fd(), peek.as_mut_ptr().cast(), peek.len(), libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        assert_eq!(queued, 1, "wake-ups waiting for 20 outcomes");
        assert_eq!(pool.take_done().len(), 20);
    }

    #[test]
    fn a_410_stops_the_endpoint_until_its_jobs_are_taken_back() {
        let mut queues: Queues<u32> = Queues::new();
        (0..3).for_each(|n| queues.queue(job(1, n)));
        queues.queue(job(2, 10));
        let first = queues.next_job(1, 32).unwrap();
        let gone = gone();
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
