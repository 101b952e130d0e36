use std::time::Duration;

use super::*;

fn policy(attempts: u32, retry_on: &[&str]) -> RetryPolicy {
    RetryPolicy::new(&gateway_config::Retry {
        attempts,
        retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
        budget: 0.2,
        per_try_timeout: None,
    })
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn parses_every_kind_of_retry_on() {
    let parse = |s: &str| s.parse::<RetryOn>();
    assert_eq!(parse("connect_failure"), Ok(RetryOn::ConnectFailure));
    assert_eq!(parse("reset"), Ok(RetryOn::Reset));
    assert_eq!(parse("timeout"), Ok(RetryOn::Timeout));
    assert_eq!(parse("503"), Ok(RetryOn::Status(503)));
    assert_eq!(parse("100"), Ok(RetryOn::Status(100)));
    assert_eq!(parse("599"), Ok(RetryOn::Status(599)));
    assert_eq!(parse("5xx"), Ok(RetryOn::StatusClass(5)));
    assert_eq!(parse("4XX"), Ok(RetryOn::StatusClass(4)));
    for bad in
        ["", "sometimes", "Timeout", "600", "099", "000", "50", "5030", "5x", "6xx", "5x3", " 503", "+03", "connect"]
    {
        let err = parse(bad).expect_err(bad);
        assert_eq!(err, UnknownRetryOn(bad.to_owned()));
        assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
    }
}

#[test]
fn retries_only_what_retry_on_names() {
    let p = policy(2, &["connect_failure", "502", "503", "504"]);
    assert!(p.should_retry(FailureKind::ConnectFailure));
    assert!(!p.should_retry(FailureKind::Reset));
    assert!(!p.should_retry(FailureKind::Timeout));
    for status in [502, 503, 504] {
        assert!(p.should_retry(FailureKind::Status(status)), "{status}");
    }
    for status in [200, 404, 429, 500, 501, 505, 599, 0, u16::MAX] {
        assert!(!p.should_retry(FailureKind::Status(status)), "{status}");
    }

    let p = policy(3, &["reset", "timeout", "5xx"]);
    assert!(!p.should_retry(FailureKind::ConnectFailure));
    assert!(p.should_retry(FailureKind::Reset) && p.should_retry(FailureKind::Timeout));
    assert!((500..=599).all(|s| p.should_retry(FailureKind::Status(s))));
    assert!(!p.should_retry(FailureKind::Status(499)) && !p.should_retry(FailureKind::Status(600)));

    let p = policy(3, &[]);
    assert!(!p.should_retry(FailureKind::ConnectFailure) && !p.should_retry(FailureKind::Status(503)));

    // Unknown entries (rejected by validation) are ignored, the rest still applies.
    let p = policy(3, &["bogus", "503"]);
    assert!(p.should_retry(FailureKind::Status(503)));
}

#[test]
fn attempts_counts_the_first_try() {
    let p = policy(2, &["503"]);
    assert_eq!((p.max_tries(), p.max_retries()), (2, 1));
    let failed = FailureKind::Status(503);
    assert!(p.should_retry_after(1, failed), "after the first try, one retry");
    assert!(!p.should_retry_after(2, failed), "after the retry, no more");
    assert!(!p.should_retry_after(1, FailureKind::Status(500)), "not in retry_on");

    let p = policy(1, &["503"]);
    assert_eq!((p.max_tries(), p.max_retries()), (1, 0));
    assert!(!p.should_retry_after(1, failed));

    let p = policy(0, &["503"]);
    assert_eq!((p.max_tries(), p.max_retries()), (1, 0), "0 acts as 1");

    let p = policy(5, &["503"]);
    assert!((1..5).all(|tries| p.should_retry_after(tries, failed)));
    assert!(!p.should_retry_after(5, failed));
}

#[test]
fn per_try_timeout_is_passed_through() {
    assert_eq!(policy(2, &[]).per_try_timeout(), None);
    let p = RetryPolicy::new(&gateway_config::Retry {
        per_try_timeout: Some(gateway_config::Duration::from_secs(2)),
        ..gateway_config::Retry::default()
    });
    assert_eq!(p.per_try_timeout(), Some(Duration::from_secs(2)));
    // The defaults: 2 tries on connect failures and 502/503/504.
    assert_eq!(p.max_tries(), 2);
    assert!(p.should_retry(FailureKind::ConnectFailure) && p.should_retry(FailureKind::Status(504)));
}

#[test]
fn backoff_ceiling_doubles_from_25ms_up_to_1s() {
    let p = policy(10, &[]);
    let ceilings: Vec<Duration> = (1..=9).map(|n| p.max_backoff(n)).collect();
    assert_eq!(ceilings, [25, 50, 100, 200, 400, 800, 1000, 1000, 1000].map(ms));
    assert_eq!(p.max_backoff(0), ms(25), "0 acts as 1");
    assert_eq!(p.max_backoff(u32::MAX), ms(1000));
}

#[test]
fn backoff_is_full_jitter_within_the_ceiling() {
    let p = policy(10, &[]);
    // The extremes of the random number.
    assert_eq!(p.backoff(1, 0), Duration::ZERO);
    assert_eq!(p.backoff(1, 25_000_000), ms(25), "the ceiling itself is reachable");
    assert_eq!(p.backoff(1, 25_000_001), Duration::ZERO, "and wraps around");
    assert!(p.backoff(1, u64::MAX) <= ms(25));
    assert!(p.backoff(u32::MAX, u64::MAX) <= ms(1000));
    assert_eq!(p.backoff(3, 42), Duration::from_nanos(42), "deterministic for a given number");

    // Spread over the whole range: with a simple PRNG, means near half the ceiling.
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for retry in 1..=8 {
        let ceiling = p.max_backoff(retry);
        let mut total = Duration::ZERO;
        let (mut low, mut high) = (ceiling, Duration::ZERO);
        let n = 10_000u32;
        for _ in 0..n {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let pause = p.backoff(retry, rng);
            assert!(pause <= ceiling, "retry {retry}: {pause:?} > {ceiling:?}");
            total += pause;
            low = low.min(pause);
            high = high.max(pause);
        }
        let mean = total / n;
        assert!(mean > ceiling * 45 / 100 && mean < ceiling * 55 / 100, "retry {retry}: mean {mean:?}");
        assert!(low < ceiling / 50 && high > ceiling * 49 / 50, "retry {retry}: {low:?}..{high:?}");
    }
}

#[test]
fn idempotent_methods() {
    for method in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
        assert!(is_idempotent(method), "{method}");
    }
    for method in ["POST", "PATCH", "CONNECT", "get", "Get", "", "PROPFIND"] {
        assert!(!is_idempotent(method), "{method}");
    }
}
