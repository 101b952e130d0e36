//! The retry policy of a service.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::status::StatusSet;

/// Back-off ceiling before the first retry; it doubles with each further retry.
pub const BACKOFF_BASE: Duration = Duration::from_millis(25);

/// The back-off ceiling never grows beyond this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a try failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The connection could not be made (refused, unreachable, connect timeout, TLS
    /// handshake): nothing of the request was sent.
    ConnectFailure,
    /// The connection was reset or closed before a complete response head arrived.
    Reset,
    /// The try did not get its response in time (`per_try_timeout`).
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

/// One entry of `retry_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// `connect_failure`
    ConnectFailure,
    /// `reset`
    Reset,
    /// `timeout`
    Timeout,
    /// A status code such as `"503"` (100 to 599).
    Status(u16),
    /// A class such as `"5xx"`: the digit (1 to 5).
    StatusClass(u8),
}

impl FromStr for RetryOn {
    type Err = UnknownRetryOn;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownRetryOn(word.to_owned());
        match word {
            "connect_failure" => return Ok(RetryOn::ConnectFailure),
            "reset" => return Ok(RetryOn::Reset),
            "timeout" => return Ok(RetryOn::Timeout),
            _ => {}
        }
        let bytes = word.as_bytes();
        if bytes.len() != 3 || !(b'1'..=b'5').contains(&bytes[0]) {
            return Err(unknown());
        }
        let class = bytes[0] - b'0';
        if bytes[1..].eq_ignore_ascii_case(b"xx") {
            return Ok(RetryOn::StatusClass(class));
        }
        if bytes[1..].iter().all(u8::is_ascii_digit) {
            let status = u16::from(class) * 100 + u16::from(bytes[1] - b'0') * 10 + u16::from(bytes[2] - b'0');
            return Ok(RetryOn::Status(status));
        }
        Err(unknown())
    }
}

/// A `retry_on` entry that is not `connect_failure`, `reset`, `timeout`, a status or a class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownRetryOn(pub String);

impl fmt::Display for UnknownRetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "retry_on `{}` is not connect_failure, reset, timeout, a status code such as \"503\" or a class such as \"5xx\"",
            self.0
        )
    }
}

impl std::error::Error for UnknownRetryOn {}

/// When and how often a service's calls are retried.
///
/// - **`attempts` is the number of tries, the first included** (at least 1): `attempts = 2`
///   is one try and at most one retry; `attempts = 1` never retries, and 0 acts as 1.
///   [`RetryPolicy::max_tries`] and [`RetryPolicy::max_retries`] spell it out.
/// - **`retry_on`** names what may be retried: `connect_failure`, `reset`, `timeout`, a
///   status such as `"503"`, or a class such as `"5xx"`. Nothing else is retried.
/// - **Back-off** before retry *n* (1 for the first retry) is drawn uniformly from
///   `0..=min(25 ms × 2^(n-1), 1 s)` ("full jitter"); the caller passes the random number,
///   so tests are deterministic.
///
/// What the policy does not decide, and the caller must: whether the method may be retried
/// ([`is_idempotent`], or a route that opts in; a connect failure means nothing was sent, so
/// it is safe for any method), whether any of the response already reached the client or a
/// body too large to replay was sent, and whether the [`RetryBudget`](crate::RetryBudget)
/// has room.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; at least 1.
    max_tries: u32,
    connect_failure: bool,
    reset: bool,
    timeout: bool,
    statuses: StatusSet,
    per_try_timeout: Option<Duration>,
}

impl RetryPolicy {
    /// Compiles the settings. Entries of `retry_on` that do not parse are ignored
    /// (configuration validation rejects them before this runs); parse them with
    /// [`RetryOn::from_str`] to report them.
    pub fn new(settings: &gateway_config::Retry) -> Self {
        let mut policy = RetryPolicy {
            max_tries: settings.attempts.max(1),
            connect_failure: false,
            reset: false,
            timeout: false,
            statuses: StatusSet::default(),
            per_try_timeout: settings.per_try_timeout.map(gateway_config::Duration::get),
        };
        for on in settings.retry_on.iter().filter_map(|word| word.parse().ok()) {
            match on {
                RetryOn::ConnectFailure => policy.connect_failure = true,
                RetryOn::Reset => policy.reset = true,
                RetryOn::Timeout => policy.timeout = true,
                RetryOn::Status(status) => policy.statuses.insert(status),
                RetryOn::StatusClass(class) => {
                    let first = u16::from(class) * 100;
                    policy.statuses.insert_range(first..=first + 99);
                }
            }
        }
        policy
    }

    /// Tries in all, the first included (`attempts`, at least 1).
    pub fn max_tries(&self) -> u32 {
        self.max_tries
    }

    /// Retries after the first try: `max_tries() - 1`.
    pub fn max_retries(&self) -> u32 {
        self.max_tries - 1
    }

    /// Whether `retry_on` covers this failure (regardless of how many tries were made).
    pub fn should_retry(&self, failure: FailureKind) -> bool {
        match failure {
            FailureKind::ConnectFailure => self.connect_failure,
            FailureKind::Reset => self.reset,
            FailureKind::Timeout => self.timeout,
            FailureKind::Status(status) => self.statuses.contains(status),
        }
    }

    /// Whether a call that has made `tries` tries, the last of which failed this way, may
    /// make another: `tries < max_tries()` and [`should_retry`](Self::should_retry).
    pub fn should_retry_after(&self, tries: u32, failure: FailureKind) -> bool {
        tries < self.max_tries && self.should_retry(failure)
    }

    /// The deadline of each try, if set; the request's own deadline still bounds the whole.
    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.per_try_timeout
    }

    /// The pause before retry number `retry` (1 for the first retry; 0 acts as 1): uniform
    /// in `0..=max_backoff(retry)`, chosen by `random` (any `u64`, e.g. from a fast PRNG).
    pub fn backoff(&self, retry: u32, random: u64) -> Duration {
        let ceiling = u64::try_from(self.max_backoff(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(random % ceiling.saturating_add(1))
    }

    /// The upper bound of the pause before retry number `retry`:
    /// `min(25 ms × 2^(retry-1), 1 s)`, i.e. 25, 50, 100, 200, 400, 800 ms, then 1 s.
    pub fn max_backoff(&self, retry: u32) -> Duration {
        let doublings = retry.max(1).saturating_sub(1).min(31);
        BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_MAX)
    }
}

/// Whether a request method is idempotent (RFC 9110 §9.2.2): `GET`, `HEAD`, `OPTIONS`,
/// `PUT`, `DELETE`, `TRACE`. Methods are case-sensitive: `get` is not `GET`.
pub fn is_idempotent(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE")
}

#[cfg(test)]
mod tests;
