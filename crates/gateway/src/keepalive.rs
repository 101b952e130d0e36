//! The two timers of a client connection between requests, kept apart:
//!
//! - `server.header_read_timeout` runs from the first byte of a request head (and, on a
//!   new HTTP/1.1 connection, from the accept) until the head is complete;
//! - `server.idle_timeout` runs while a keep-alive connection has no request in flight
//!   and no head started.
//!
//! hyper has one timer for both (its `header_read_timeout` starts as soon as it waits for
//! the next head, so an idle keep-alive connection got the short header timeout), so the
//! gateway keeps its own: the HTTP/1.1 head scanner marks where heads start and end
//! ([`ConnClock::head_progress`]), the service holds an [`InFlight`] guard per request
//! until its response body is finished, and [`ConnClock::expired`] is raced against the
//! connection. On [`Expiry::Idle`] the server shuts the connection down gracefully (an
//! HTTP/2 client gets GOAWAY); on [`Expiry::Head`] a started HTTP/1.1 head gets a 408
//! `request_timeout` and the connection closes (a connection that never sent a byte is
//! closed without one).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// The timers of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// `server.header_read_timeout`.
    pub header: Duration,
    /// `server.idle_timeout`.
    pub idle: Duration,
    /// How long a new connection may wait for its first request: `header` for HTTP/1.1,
    /// whose next bytes must be a head; `idle` for HTTP/2, whose preface already arrived.
    pub first_request: Duration,
}

/// Which timer ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// A request head did not arrive in time: close.
    Head,
    /// Nothing in flight for `idle_timeout`: shut down gracefully.
    Idle,
}

/// What a connection is doing, as far as its timers care; cheap to clone.
#[derive(Clone)]
pub struct ConnClock(Arc<State>);

struct State {
    start: Instant,
    in_flight: AtomicU32,
    /// Requests received so far (saturating: only zero or not matters).
    requests: AtomicU32,
    /// Milliseconds from `start` to when the last request finished (0: none yet).
    idle_since_ms: AtomicU64,
    /// Milliseconds from `start` to the current head's first byte, plus one; 0: no head
    /// in progress.
    head_since_ms: AtomicU64,
    /// The started head took too long: the connection answers 408 and closes.
    head_timed_out: AtomicBool,
}

impl ConnClock {
    pub fn new() -> Self {
        ConnClock(Arc::new(State {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            requests: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_since_ms: AtomicU64::new(0),
            head_timed_out: AtomicBool::new(false),
        }))
    }

    fn now_ms(&self) -> u64 {
        self.0.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.0.start + Duration::from_millis(ms)
    }

    /// Whether a request head is partly read. Called after every read of the scanner.
    pub fn head_progress(&self, in_head: bool) {
        let since = &self.0.head_since_ms;
        if !in_head {
            since.store(0, Ordering::Relaxed);
        } else if since.load(Ordering::Relaxed) == 0 {
            since.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    /// Whether some bytes of a request head arrived and the head is not complete.
    pub fn head_in_progress(&self) -> bool {
        self.0.head_since_ms.load(Ordering::Relaxed) != 0
    }

    /// Mark the started head as timed out: the connection's reader answers 408 the next
    /// time it is polled (see [`StrictIo`](crate::strict::StrictIo)).
    pub fn time_out_head(&self) {
        self.0.head_timed_out.store(true, Ordering::Relaxed);
    }

    pub fn head_timed_out(&self) -> bool {
        self.0.head_timed_out.load(Ordering::Relaxed)
    }

    /// A request reached the service; hold the guard until its response is finished.
    pub fn request(&self) -> InFlight {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        let _ = self.0.requests.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1));
        InFlight { _guard: Arc::new(Guard(self.clone())) }
    }

    /// When the next timer runs out, as things stand; `None` while a request is in flight
    /// (its own timeouts apply then).
    fn deadline(&self, timers: Timers) -> Option<(Instant, Expiry)> {
        let state = &*self.0;
        if state.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let idle_since = state.idle_since_ms.load(Ordering::Relaxed);
        let head_since = state.head_since_ms.load(Ordering::Relaxed);
        if head_since != 0 {
            // A head pipelined behind a request in flight starts its clock when that
            // request finished.
            return Some((self.at(idle_since.max(head_since - 1)) + timers.header, Expiry::Head));
        }
        if state.requests.load(Ordering::Relaxed) == 0 {
            let expiry = if timers.first_request < timers.idle { Expiry::Head } else { Expiry::Idle };
            return Some((self.at(0) + timers.first_request, expiry));
        }
        Some((self.at(idle_since) + timers.idle, Expiry::Idle))
    }

    /// Resolves when a timer runs out. Sleeps at most the shorter timer at a time, so a
    /// change of state (a head starting, a request finishing) is seen before any deadline
    /// it sets could pass.
    pub async fn expired(&self, timers: Timers) -> Expiry {
        let period = timers.header.min(timers.idle).max(Duration::from_millis(1));
        loop {
            let now = Instant::now();
            match self.deadline(timers) {
                Some((at, expiry)) if now >= at => return expiry,
                Some((at, _)) => tokio::time::sleep_until(at.min(now + period)).await,
                None => tokio::time::sleep(period).await,
            }
        }
    }
}

/// One request in flight on its connection. Clones share it: a tunnel (an HTTP/2
/// extended CONNECT) keeps a clone for as long as it runs, so its connection is not idle.
#[derive(Clone)]
pub struct InFlight {
    _guard: Arc<Guard>,
}

struct Guard(ConnClock);

impl Drop for Guard {
    fn drop(&mut self) {
        let state = &*self.0 .0;
        // Stored before the count drops, so the clock never sees "idle since long ago".
        state.idle_since_ms.store(self.0.now_ms(), Ordering::Relaxed);
        state.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until it is finished
    /// or dropped.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        guard: InFlight,
    }
}

impl<B> Tracked<B> {
    pub fn new(inner: B, guard: InFlight) -> Self {
        Tracked { inner, guard }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMERS: Timers = Timers {
        header: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        first_request: Duration::from_secs(10),
    };

    /// How long `expired` takes from now, on paused time.
    async fn expires_after(clock: &ConnClock) -> (Duration, Expiry) {
        let started = Instant::now();
        let expiry = clock.expired(TIMERS).await;
        (started.elapsed(), expiry)
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_waits_header_read_timeout_for_its_first_request() {
        let clock = ConnClock::new();
        assert_eq!(expires_after(&clock).await, (Duration::from_secs(10), Expiry::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn between_requests_the_idle_timeout_applies() {
        let clock = ConnClock::new();
        drop(clock.request());
        let (after, expiry) = expires_after(&clock).await;
        assert_eq!(expiry, Expiry::Idle);
        assert_eq!(after, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_gets_header_read_timeout_from_its_first_byte() {
        let clock = ConnClock::new();
        drop(clock.request());
        let watcher = tokio::spawn({
            let clock = clock.clone();
            async move { expires_after(&clock).await }
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        clock.head_progress(true);
        clock.head_progress(true); // more bytes of the same head: the clock keeps its start
        let (after, expiry) = watcher.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(expiry, Expiry::Head);
        assert_eq!(after, Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_expires_while_a_request_is_in_flight() {
        let clock = ConnClock::new();
        let guard = clock.request();
        clock.head_progress(false);
        let watcher = tokio::spawn({
            let clock = clock.clone();
            async move { expires_after(&clock).await }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!watcher.is_finished());
        drop(guard);
        let (after, expiry) = watcher.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((after, expiry), (Duration::from_secs(660), Expiry::Idle));
    }
}
