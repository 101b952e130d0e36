//! RFC 3339 timestamps without a date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// A UTC instant with milliseconds (`2026-11-30T02:46:21.005Z`), formatted on the stack: the
/// access log writes one per request.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_millis(1_709_251_200_123);
/// assert_eq!(gateway_core::Rfc3339::at(t).as_str(), "2024-03-01T00:00:00.123Z");
/// ```
#[derive(Clone, Copy)]
pub struct Rfc3339([u8; 24]);

impl Rfc3339 {
    /// Now. The date and time down to the second are formatted once per second per thread.
    pub fn now() -> Rfc3339 {
        thread_local! {
            static LAST: std::cell::Cell<(u64, Rfc3339)> = const { std::cell::Cell::new((u64::MAX, Rfc3339(*b"1970-01-01T00:00:00.000Z"))) };
        }
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let (secs, millis) = (since.as_secs(), since.subsec_millis());
        let mut stamp = LAST.with(|last| match last.get() {
            (at, stamp) if at == secs => stamp,
            _ => {
                let stamp = Rfc3339::at(UNIX_EPOCH + std::time::Duration::from_secs(secs));
                last.set((secs, stamp));
                stamp
            }
        });
        stamp.0[20] = b'0' + (millis / 100) as u8;
        stamp.0[21] = b'0' + (millis / 10 % 10) as u8;
        stamp.0[22] = b'0' + (millis % 10) as u8;
        stamp
    }

    /// `t` (instants before 1970 read as 1970).
    pub fn at(t: SystemTime) -> Rfc3339 {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs();
        let rem = secs % 86_400;
        let (year, month, day) = civil_from_days((secs / 86_400) as i64);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        // Years past 9999 are not instants a running gateway meets.
        put(0, 4, year.clamp(0, 9999) as u64);
        put(5, 2, u64::from(month));
        put(8, 2, u64::from(day));
        put(11, 2, rem / 3600);
        put(14, 2, rem % 3600 / 60);
        put(17, 2, rem % 60);
        put(20, 3, u64::from(since.subsec_millis()));
        Rfc3339(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64, millis: u64) -> String {
        Rfc3339::at(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)).to_string()
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_796_006_781, 5), "2026-11-30T02:46:21.005Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(951_782_400 - 1, 0), "2000-02-28T23:59:59.000Z");
        assert_eq!(at(1_709_251_200, 123), "2024-03-01T00:00:00.123Z");
        assert_eq!(Rfc3339::at(UNIX_EPOCH - Duration::from_secs(1)).as_str(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn now_matches_a_fresh_format() {
        for _ in 0..1000 {
            let before = SystemTime::now();
            let now = Rfc3339::now();
            let after = SystemTime::now();
            let (a, b) = (Rfc3339::at(before).to_string(), Rfc3339::at(after).to_string());
            assert!(a.as_str() <= now.as_str() && now.as_str() <= b.as_str(), "{a} {now} {b}");
        }
    }
}
