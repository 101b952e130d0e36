//! The sampling decision, made from the trace id so that every hop using the same rule
//! and ratio agrees.
//!
//! The rule (OpenTelemetry's `parentbased_traceidratio`):
//! - a valid incoming `traceparent` decides: its sampled flag set means record, unset
//!   means do not record, whatever the ratio;
//! - a trace that starts at the gateway is recorded when the trace id's randomness, its
//!   rightmost 56 bits (7 bytes, the part W3C Trace Context level 2 declares random), is at
//!   or above the threshold `(1 - ratio) * 2^56`. This is the comparison OpenTelemetry's
//!   consistent-probability sampling uses, so collectors and SDKs that sample by trace id
//!   with the same ratio keep the same traces.

/// `2^56`: the randomness of a trace id is in `0..RANDOM_SPAN`.
const RANDOM_SPAN: u64 = 1 << 56;

/// A ratio turned into a threshold on the trace id's randomness.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sampler {
    ratio: f64,
    threshold: u64,
}

impl Sampler {
    /// Records no trace that starts here.
    pub(crate) const NEVER: Sampler = Sampler { ratio: 0.0, threshold: RANDOM_SPAN };

    /// `ratio` in `0.0..=1.0` (0: record no trace that starts here; 1: all of them).
    pub(crate) fn new(ratio: f64) -> Result<Sampler, String> {
        if !ratio.is_finite() || !(0.0..=1.0).contains(&ratio) {
            return Err(format!("sample ratio {ratio} is not between 0 and 1"));
        }
        let threshold = if ratio >= 1.0 {
            0
        } else {
            // Exact for ratios that are multiples of 2^-56; the rounding error is below
            // 2^-56 otherwise.
            (((1.0 - ratio) * RANDOM_SPAN as f64).round() as u64).min(RANDOM_SPAN)
        };
        Ok(Sampler { ratio, threshold })
    }

    pub(crate) fn ratio(&self) -> f64 {
        self.ratio
    }

    /// Whether a trace that starts here with this id is recorded.
    pub(crate) fn sample(&self, trace_id: &[u8; 16]) -> bool {
        let mut low = [0u8; 8];
        low.copy_from_slice(&trace_id[8..]);
        let randomness = u64::from_be_bytes(low) & (RANDOM_SPAN - 1);
        randomness >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::id::new_trace_id;

    #[test]
    fn decision_depends_only_on_the_trace_id() {
        let a = Sampler::new(0.3).expect("ratio");
        let b = Sampler::new(0.3).expect("ratio");
        for _ in 0..10_000 {
            let id = new_trace_id();
            assert_eq!(a.sample(&id), b.sample(&id));
            assert_eq!(a.sample(&id), a.sample(&id));
        }
        // A lower ratio keeps a subset of what a higher one keeps.
        let low = Sampler::new(0.1).expect("ratio");
        for _ in 0..10_000 {
            let id = new_trace_id();
            assert!(!low.sample(&id) || a.sample(&id));
        }
    }

    #[test]
    fn ratio_is_honoured() {
        let all = Sampler::new(1.0).expect("ratio");
        let none = Sampler::new(0.0).expect("ratio");
        let quarter = Sampler::new(0.25).expect("ratio");
        let mut kept = 0;
        for _ in 0..100_000 {
            let id = new_trace_id();
            assert!(all.sample(&id));
            assert!(!none.sample(&id));
            kept += usize::from(quarter.sample(&id));
        }
        assert!((23_000..27_000).contains(&kept), "kept {kept} of 100000 at 0.25");
        // Randomness is the rightmost 7 bytes: the first 9 bytes do not matter.
        let mut id = [0xffu8; 16];
        id[9..].fill(0);
        assert!(!quarter.sample(&id));
        id[9] = 0xff;
        assert!(quarter.sample(&id));
    }

    #[test]
    fn rejects_ratios_out_of_range() {
        for ratio in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            assert!(Sampler::new(ratio).is_err(), "{ratio}");
        }
    }
}
