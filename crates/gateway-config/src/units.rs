//! Durations (`"250ms"`, `"5s"`, `"1m"`) and sizes (`1024`, `"10MiB"`) as they are written in the file.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration written as a string with a unit: `ms`, `s`, `m`, `h` (also `us`, `d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }

    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    /// A decimal number (`5`, `1.5`, `.5`) and a unit, read exactly (no floating point),
    /// rounded to the nanosecond; at most 10⁹ s.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{s}` needs a unit (ms, s, m, h)"))?;
        let (number, unit) = s.split_at(split);
        let invalid = || format!("invalid duration `{s}`: expected a number and a unit, such as \"250ms\" or \"5s\"");
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(invalid());
        }
        let nanos_per_unit: u128 = match unit.trim() {
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            other => return Err(format!("invalid duration unit `{other}` in `{s}` (use ms, s, m or h)")),
        };
        let out_of_range = || format!("duration `{s}` is out of range");
        // Leading zeros aside, more than 20 digits is more than 10⁹ s in any unit.
        let whole = whole.trim_start_matches('0');
        if whole.len() > 20 {
            return Err(out_of_range());
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid())? };
        // Digits past the 18th are far below a nanosecond in every unit.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| invalid())?;
            let denominator = 10u128.pow(fraction.len() as u32);
            (digits * nanos_per_unit + denominator / 2) / denominator
        };
        let nanos = whole * nanos_per_unit + fraction_nanos;
        if nanos > 1_000_000_000 * 1_000_000_000 {
            return Err(out_of_range());
        }
        let nanos = u64::try_from(nanos).map_err(|_| out_of_range())?;
        Ok(Duration(std::time::Duration::from_nanos(nanos)))
    }
}

/// Exact, so that what is shown parses back to the same value: whole seconds as `5s`,
/// whole milliseconds as `250ms`, else microseconds (`1500us`, `0.1us`).
impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            f.write_str("0ms")
        } else if nanos.is_multiple_of(1_000_000_000) {
            write!(f, "{}s", nanos / 1_000_000_000)
        } else if nanos.is_multiple_of(1_000_000) {
            write!(f, "{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            write!(f, "{}us", nanos / 1_000)
        } else {
            let fraction = format!("{:03}", nanos % 1_000);
            write!(f, "{}.{}us", nanos / 1_000, fraction.trim_end_matches('0'))
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d).map_err(|_| de::Error::custom("expected a duration string such as \"5s\""))?;
        s.parse().map_err(de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size in bytes: an integer, or a string with `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let value: u64 =
            number.parse().map_err(|_| format!("invalid size `{s}`: expected a number such as \"10MiB\""))?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" | "k" => 1024,
            "mb" => 1_000_000,
            "mib" | "m" => 1024 * 1024,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1024 * 1024 * 1024,
            other => return Err(format!("invalid size unit `{other}` in `{s}` (use B, KiB, MiB or GiB)")),
        };
        value.checked_mul(scale).map(ByteSize).ok_or_else(|| format!("size `{s}` is out of range"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: an integer number of bytes or a string such as \"10MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!("250ms".parse::<Duration>(), Ok(Duration::from_millis(250)));
        assert_eq!("5s".parse::<Duration>(), Ok(Duration::from_secs(5)));
        assert_eq!("1m".parse::<Duration>(), Ok(Duration::from_secs(60)));
        assert_eq!("1.5s".parse::<Duration>(), Ok(Duration::from_millis(1500)));
        assert!("5".parse::<Duration>().is_err());
        assert!("5 parsecs".parse::<Duration>().is_err());
        assert!("".parse::<Duration>().is_err());
        assert!(".s".parse::<Duration>().is_err());
        assert!("1.2.3s".parse::<Duration>().is_err());
        assert_eq!("0.3s".parse::<Duration>(), Ok(Duration::from_millis(300)));
        assert_eq!(".5m".parse::<Duration>(), Ok(Duration::from_secs(30)));
        assert_eq!("1.s".parse::<Duration>(), Ok(Duration::from_secs(1)));
        assert_eq!("0.0001us".parse::<Duration>(), Ok(Duration(std::time::Duration::ZERO)));
        assert_eq!("1000000000s".parse::<Duration>(), Ok(Duration::from_secs(1_000_000_000)));
        assert!("1000000000.000000001s".parse::<Duration>().is_err());
        assert!("0000000000000000000000000000000000001s".parse::<Duration>().is_ok());
        assert!("99999999999999999999999d".parse::<Duration>().is_err());
    }

    /// What is shown parses back to the same value (it used to show 1.5 ms as `1ms`).
    #[test]
    fn durations_display_exactly() {
        for (nanos, shown) in [
            (0, "0ms"),
            (1, "0.001us"),
            (100, "0.1us"),
            (1_000, "1us"),
            (1_500_000, "1500us"),
            (250_000_000, "250ms"),
            (90_000_000_000, "90s"),
        ] {
            let d = Duration(std::time::Duration::from_nanos(nanos));
            assert_eq!(d.to_string(), shown);
            assert_eq!(shown.parse::<Duration>(), Ok(d));
        }
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("10MiB".parse::<ByteSize>(), Ok(ByteSize(10 * 1024 * 1024)));
        assert_eq!("512".parse::<ByteSize>(), Ok(ByteSize(512)));
        assert_eq!("1KB".parse::<ByteSize>(), Ok(ByteSize(1000)));
        assert!("ten".parse::<ByteSize>().is_err());
        assert!("99999999999999GiB".parse::<ByteSize>().is_err());
    }
}
