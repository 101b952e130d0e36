//! The values a path template captured.

use std::sync::Arc;

/// Parameters captured by a path template, in template order.
///
/// Values are the text of the normalised request path: percent-escapes of reserved
/// characters are still encoded (`%20` stays `%20`), so a value can be put back into a
/// URL as it is. A catch-all value (`{*rest}`) may contain `/` and may be empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// Names are shared with the compiled route; only the values are allocated per match.
    pairs: Vec<(Arc<str>, Box<str>)>,
}

impl Params {
    pub(crate) fn with_capacity(n: usize) -> Params {
        Params { pairs: Vec::with_capacity(n) }
    }

    pub(crate) fn push(&mut self, name: Arc<str>, value: &str) {
        self.pairs.push((name, value.into()));
    }

    /// The value captured for `name` (for `{*rest}` the name is `rest`).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(n, _)| &**n == name).map(|(_, v)| &**v)
    }

    /// `(name, value)` pairs in template order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (&**n, &**v))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}
