//! Weighted traffic split (`split`, `sticky_on`): which service one request goes to.
//!
//! - Without `sticky_on`, or when the request does not carry the sticky value, each target
//!   owns a band of `[0, total_weight)` in config order (with `90/10`, `[0, 90)` and
//!   `[90, 100)`) and the caller's random number picks a point in it.
//! - With `sticky_on`, the header or cookie value picks the target by weighted rendezvous
//!   hashing: every target scores `weight / -ln(u)`, where `u` in `(0, 1)` is a stable hash of
//!   the value and the target's service name, and the highest score wins. Each target wins
//!   with probability `weight / total`, the same client wins on the same target on every
//!   gateway instance for as long as the weights hold, and a weight change moves only the
//!   clients it must: `90/10` to `80/20` moves 10% of clients, all from the first to the
//!   second; adding a target only takes clients to the new one; removing one only moves its
//!   own clients; reordering the list moves no one.
//!
//! Rendezvous rather than cumulative bands over one hash: bands are just as stable while the
//! total weight stays the same, but a change of the total (adding a target, `90/10` to
//! `90/20`) rescales every boundary and moves clients between targets whose weight did not
//! change. With two to five targets the per-request cost (one `ln` per target) is negligible.

use gateway_config::schema::SplitTarget;
use http::{HeaderMap, HeaderName};

use crate::util::{cookie, hash64, mix64, scale};

/// What a split sticks on: `header:NAME` or `cookie:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyOn {
    /// The first value of a request header.
    Header(HeaderName),
    /// A cookie's value, from any `cookie` header.
    Cookie(String),
}

impl StickyOn {
    /// Parses `header:NAME` or `cookie:NAME`.
    pub fn parse(s: &str) -> Result<StickyOn, String> {
        match s.split_once(':') {
            Some(("header", name)) => HeaderName::from_bytes(name.as_bytes())
                .map(StickyOn::Header)
                .map_err(|_| format!("sticky_on: `{name}` is not a header name")),
            Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ', ',', '"']) => {
                Ok(StickyOn::Cookie(name.to_owned()))
            }
            _ => Err(format!("sticky_on `{s}` must be \"header:NAME\" or \"cookie:NAME\"")),
        }
    }

    /// The request's sticky value, when it carries a non-empty one.
    fn value<'h>(&self, headers: &'h HeaderMap) -> Option<&'h [u8]> {
        let value = match self {
            StickyOn::Header(name) => headers.get(name).map(|v| v.as_bytes()),
            StickyOn::Cookie(name) => cookie(headers, name),
        };
        value.filter(|v| !v.is_empty())
    }
}

/// One side of a compiled split.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    service: String,
    weight: u64,
    /// The upper end of this target's random band: the weights so far, this one included.
    band_end: u64,
    /// `hash64(service)`, mixed with the client's hash for rendezvous scores.
    seed: u64,
}

/// A compiled split: the targets of positive weight and what the split sticks on.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Targets in config order, band ends strictly increasing; zero-weight targets are left
    /// out and a service named twice is one target with the summed weight.
    targets: Box<[Target]>,
    /// The sum of the weights: the end of the last band.
    total: u64,
    sticky_on: Option<StickyOn>,
}

impl Split {
    /// Compiles a route's `split` and `sticky_on`. Errors when there is no target of positive
    /// weight or `sticky_on` is malformed (config validation reports both first).
    pub fn compile(targets: &[SplitTarget], sticky_on: Option<&str>) -> Result<Split, String> {
        let mut merged: Vec<Target> = Vec::with_capacity(targets.len());
        for t in targets.iter().filter(|t| t.weight > 0) {
            let service = t.service.get_ref();
            match merged.iter_mut().find(|m| &m.service == service) {
                Some(m) => m.weight += u64::from(t.weight),
                None => merged.push(Target {
                    service: service.clone(),
                    weight: u64::from(t.weight),
                    band_end: 0,
                    seed: hash64(service.as_bytes()),
                }),
            }
        }
        if merged.is_empty() {
            return Err("split needs at least one target with a weight greater than 0".to_owned());
        }
        let mut total = 0;
        for m in &mut merged {
            total += m.weight;
            m.band_end = total;
        }
        let sticky_on = sticky_on.map(StickyOn::parse).transpose()?;
        Ok(Split { targets: merged.into_boxed_slice(), total, sticky_on })
    }

    /// The service for one request. `random` is a uniformly random `u64` (such as
    /// [`crate::random_u64`]); it is used when the split is not sticky or the request carries
    /// no (or an empty) sticky value.
    pub fn pick(&self, headers: &HeaderMap, random: u64) -> &str {
        match self.sticky_on.as_ref().and_then(|s| s.value(headers)) {
            Some(value) => self.rendezvous(hash64(value)),
            None => self.band(scale(random, self.total)),
        }
    }

    /// The services this split may send to, in config order.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.targets.iter().map(|t| t.service.as_str())
    }

    /// What the split sticks on, if anything.
    pub fn sticky_on(&self) -> Option<&StickyOn> {
        self.sticky_on.as_ref()
    }

    fn band(&self, point: u64) -> &str {
        let i = self.targets.partition_point(|t| t.band_end <= point);
        let i = i.min(self.targets.len() - 1);
        &self.targets[i].service
    }

    /// Weighted rendezvous: the target with the highest `weight / -ln(u)`.
    fn rendezvous(&self, client: u64) -> &str {
        let mut best = (f64::NEG_INFINITY, &self.targets[0]);
        for t in self.targets.iter() {
            let h = mix64(client ^ t.seed);
            // The top 53 bits as a fraction strictly inside (0, 1), so `ln` is finite and < 0.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = t.weight as f64 / -u.ln();
            if score > best.0 {
                best = (score, t);
            }
        }
        &best.1.service
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::COOKIE;
    use http::HeaderValue;
    use serde_spanned::Spanned;

    fn targets(weights: &[(&str, u32)]) -> Vec<SplitTarget> {
        weights
            .iter()
            .map(|(service, weight)| SplitTarget {
                service: Spanned::new(0..0, (*service).to_owned()),
                weight: *weight,
            })
            .collect()
    }

    fn header(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("test value"));
        h
    }

    #[test]
    fn compile_rejects_bad_input() {
        assert!(Split::compile(&targets(&[("a", 0)]), None).is_err());
        assert!(Split::compile(&[], None).is_err());
        assert!(Split::compile(&targets(&[("a", 1)]), Some("ip")).is_err());
        assert!(Split::compile(&targets(&[("a", 1)]), Some("cookie:")).is_err());
        assert!(Split::compile(&targets(&[("a", 1)]), Some("header:bad name")).is_err());
        let split = Split::compile(&targets(&[("a", 0), ("b", 3)]), Some("cookie:sid")).expect("valid");
        assert_eq!(split.services().collect::<Vec<_>>(), ["b"]);
        assert_eq!(split.sticky_on(), Some(&StickyOn::Cookie("sid".into())));
    }

    #[test]
    fn random_ratio_holds() {
        let split = Split::compile(&targets(&[("a", 90), ("b", 10)]), None).expect("valid");
        let empty = HeaderMap::new();
        let b = (0..10_000).filter(|_| split.pick(&empty, crate::random_u64()) == "b").count();
        assert!((800..=1200).contains(&b), "b got {b} of 10000");
    }

    #[test]
    fn zero_weight_never_picked_and_edges_hold() {
        let split = Split::compile(&targets(&[("a", 1), ("z", 0), ("b", 1)]), None).expect("valid");
        let empty = HeaderMap::new();
        assert_eq!(split.pick(&empty, 0), "a");
        assert_eq!(split.pick(&empty, u64::MAX), "b");
        assert_eq!(split.pick(&empty, u64::MAX / 2), "a");
        assert_eq!(split.pick(&empty, u64::MAX / 2 + 1), "b");
    }

    #[test]
    fn sticky_per_header() {
        let split = Split::compile(&targets(&[("a", 50), ("b", 50)]), Some("header:x-user-id")).expect("valid");
        let mut sides = [0usize; 2];
        for user in 0..200 {
            let h = header("x-user-id", &format!("user-{user}"));
            let first = split.pick(&h, crate::random_u64());
            for _ in 0..20 {
                assert_eq!(split.pick(&h, crate::random_u64()), first, "user-{user} moved");
            }
            sides[usize::from(first == "b")] += 1;
        }
        // Stable does not mean one-sided: the users spread over both sides.
        assert!(sides[0] > 60 && sides[1] > 60, "{sides:?}");
        // A missing or empty sticky value falls back to random.
        let empty = header("x-user-id", "");
        let b = (0..1000).filter(|_| split.pick(&empty, crate::random_u64()) == "b").count();
        assert!((400..=600).contains(&b), "{b}");
    }

    #[test]
    fn sticky_per_cookie() {
        let split = Split::compile(&targets(&[("a", 50), ("b", 50)]), Some("cookie:sid")).expect("valid");
        for user in 0..100 {
            let mut one = HeaderMap::new();
            one.append(COOKIE, HeaderValue::from_static("theme=dark"));
            one.append(COOKIE, HeaderValue::from_str(&format!("lang=en; sid={user}")).expect("valid"));
            let other = header("cookie", &format!("sid={user}; theme=light"));
            let side = split.pick(&one, 0);
            assert_eq!(split.pick(&one, u64::MAX), side);
            assert_eq!(split.pick(&other, u64::MAX), side, "same sid, other cookies");
        }
    }

    #[test]
    fn weight_change_moves_only_the_changed_band() {
        let before = Split::compile(&targets(&[("a", 90), ("b", 10)]), Some("header:x-user-id")).expect("valid");
        let after = Split::compile(&targets(&[("a", 80), ("b", 20)]), Some("header:x-user-id")).expect("valid");
        let mut moved = 0;
        for user in 0..10_000 {
            let h = header("x-user-id", &format!("u{user}"));
            let (old, new) = (before.pick(&h, 0), after.pick(&h, 0));
            if old != new {
                assert_eq!((old, new), ("a", "b"), "only a -> b moves");
                moved += 1;
            }
        }
        assert!((800..=1200).contains(&moved), "moved {moved} of 10000");

        // A new target only takes clients; nobody moves between the old ones.
        let three =
            Split::compile(&targets(&[("a", 80), ("b", 20), ("c", 10)]), Some("header:x-user-id")).expect("valid");
        let mut to_c = 0;
        for user in 0..10_000 {
            let h = header("x-user-id", &format!("u{user}"));
            let (old, new) = (after.pick(&h, 0), three.pick(&h, 0));
            if old != new {
                assert_eq!(new, "c", "{old} -> {new}");
                to_c += 1;
            }
        }
        assert!((700..=1100).contains(&to_c), "c took {to_c} of 10000 (expected ~909)");

        // Reordering the list moves no one.
        let reordered = Split::compile(&targets(&[("b", 20), ("a", 80)]), Some("header:x-user-id")).expect("valid");
        for user in 0..1_000 {
            let h = header("x-user-id", &format!("u{user}"));
            assert_eq!(after.pick(&h, 0), reordered.pick(&h, 0));
        }
    }

    #[test]
    fn sticky_ratio_follows_weights() {
        let split =
            Split::compile(&targets(&[("a", 70), ("b", 20), ("c", 10)]), Some("header:x-user-id")).expect("valid");
        let mut counts = std::collections::HashMap::new();
        for user in 0..10_000 {
            *counts.entry(split.pick(&header("x-user-id", &format!("k{user}")), 0)).or_insert(0) += 1;
        }
        for (service, expected) in [("a", 7000), ("b", 2000), ("c", 1000)] {
            let got: i32 = counts.get(service).copied().unwrap_or(0);
            assert!((got - expected).abs() < 300, "{service}: {got}, expected ~{expected}");
        }
    }

    #[test]
    fn duplicate_services_merge() {
        let split = Split::compile(&targets(&[("a", 1), ("b", 2), ("a", 1)]), None).expect("valid");
        assert_eq!(split.services().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(split.pick(&HeaderMap::new(), u64::MAX / 2 - 1), "a");
    }
}
