//! A fixed-size set of HTTP status codes: a lookup is one shift and one mask, no allocation.

/// Status codes `0..640` (one bit each); codes outside that range are never members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StatusSet {
    bits: [u64; 10],
}

impl StatusSet {
    const LIMIT: u16 = 64 * 10;

    pub(crate) fn insert(&mut self, status: u16) {
        if status < Self::LIMIT {
            self.bits[usize::from(status / 64)] |= 1 << (status % 64);
        }
    }

    /// Adds every code of an inclusive range (`500..=599` for `"5xx"`).
    pub(crate) fn insert_range(&mut self, range: std::ops::RangeInclusive<u16>) {
        for status in range {
            self.insert(status);
        }
    }

    pub(crate) fn contains(&self, status: u16) -> bool {
        status < Self::LIMIT && self.bits[usize::from(status / 64)] & (1 << (status % 64)) != 0
    }
}

impl FromIterator<u16> for StatusSet {
    fn from_iter<I: IntoIterator<Item = u16>>(iter: I) -> Self {
        let mut set = StatusSet::default();
        for status in iter {
            set.insert(status);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::StatusSet;

    #[test]
    fn membership_and_bounds() {
        let set: StatusSet = [0, 63, 64, 500, 503, 639, 640, 65535].into_iter().collect();
        for member in [0, 63, 64, 500, 503, 639] {
            assert!(set.contains(member), "{member}");
        }
        for other in [1, 62, 65, 501, 502, 599, 640, 65535] {
            assert!(!set.contains(other), "{other}");
        }
        let mut class = StatusSet::default();
        class.insert_range(500..=599);
        assert!(class.contains(500) && class.contains(599) && !class.contains(499) && !class.contains(600));
    }
}
