//! Positions of keys and values in the parsed document, for errors about values
//! whose schema type carries no span.

use std::ops::Range;

use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue};

use crate::env::SourceMap;

/// One step of a path into the document.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Seg<'a> {
    /// A key of a table.
    K(&'a str),
    /// An element of an array.
    I(usize),
}

/// Looks up spans in the expanded document.
pub(crate) struct Spans<'a, 'i> {
    doc: &'a DeTable<'i>,
    pub(crate) map: &'a SourceMap,
}

impl<'a, 'i> Spans<'a, 'i> {
    pub(crate) fn new(doc: &'a DeTable<'i>, map: &'a SourceMap) -> Self {
        Spans { doc, map }
    }

    /// The span of the value at `path`, or of the deepest part of it that exists.
    pub(crate) fn value(&self, path: &[Seg<'_>]) -> Range<usize> {
        self.walk(path, false)
    }

    /// Like [`Spans::value`], but for a table entry the span of its key: where to
    /// point when the entry itself is wrong rather than its value.
    pub(crate) fn key(&self, path: &[Seg<'_>]) -> Range<usize> {
        self.walk(path, true)
    }

    fn walk(&self, path: &[Seg<'_>], want_key: bool) -> Range<usize> {
        let mut best = 0..0;
        let mut table = Some(self.doc);
        let mut array: Option<&[Spanned<DeValue<'i>>]> = None;
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let value = match (*seg, table, array) {
                (Seg::K(k), Some(t), _) => match t.get_key_value(k) {
                    Some((key, value)) => {
                        best = if (want_key && last) || is_table(value) { key.span() } else { value.span() };
                        value
                    }
                    None => break,
                },
                (Seg::I(n), _, Some(a)) => match a.get(n) {
                    Some(value) => {
                        // An element of `[[routes]]` spans its header; an inline one, itself.
                        best = value.span();
                        value
                    }
                    None => break,
                },
                _ => break,
            };
            table = value.get_ref().as_table();
            array = match value.get_ref() {
                DeValue::Array(a) => Some(a),
                _ => None,
            };
        }
        best
    }
}

fn is_table(value: &Spanned<DeValue<'_>>) -> bool {
    matches!(value.get_ref(), DeValue::Table(_))
}

/// Whether `pos` lies in `value` or anything inside it.
fn holds(value: &Spanned<DeValue<'_>>, pos: usize) -> bool {
    if value.span().contains(&pos) {
        return true;
    }
    match value.get_ref() {
        DeValue::Table(t) => t.iter().any(|(k, v)| k.span().contains(&pos) || holds(v, pos)),
        DeValue::Array(a) => a.iter().any(|v| holds(v, pos)),
        _ => false,
    }
}

/// What [`remove_deepest`] took out of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Removed {
    /// The entry `key` of the table whose span starts at `table`.
    Key { key: String, table: usize },
    /// An element of an array.
    Element,
    /// Nothing holds the position.
    Nothing,
}

/// Removes the innermost entry or element of `doc` that holds `pos`: the key an
/// "unknown field" error is about, the value of a "wrong type" error, or the table
/// a "missing field" error is about.
pub(crate) fn remove_deepest(doc: &mut DeTable<'_>, span: Range<usize>, pos: usize) -> Removed {
    let found =
        doc.iter().find(|(k, v)| k.span().contains(&pos) || holds(v, pos)).map(|(k, _)| k.get_ref().to_string());
    let Some(key) = found else {
        return Removed::Nothing;
    };
    if let Some(value) = doc.get_mut(key.as_str()) {
        let deeper = remove_deepest_in(value, pos);
        if deeper != Removed::Nothing {
            return deeper;
        }
    }
    doc.remove(key.as_str());
    Removed::Key { key, table: span.start }
}

fn remove_deepest_in(value: &mut Spanned<DeValue<'_>>, pos: usize) -> Removed {
    let span = value.span();
    match value.get_mut() {
        DeValue::Table(t) => remove_deepest(t, span, pos),
        DeValue::Array(a) => {
            let Some(n) = a.iter().position(|v| holds(v, pos)) else {
                return Removed::Nothing;
            };
            if let Some(element) = a.get_mut(n) {
                let deeper = remove_deepest_in(element, pos);
                if deeper != Removed::Nothing {
                    return deeper;
                }
            }
            let kept: toml::de::DeArray<'_> = std::mem::replace(a, toml::de::DeArray::new())
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i != n)
                .map(|(_, v)| v)
                .collect();
            *a = kept;
            Removed::Element
        }
        _ => Removed::Nothing,
    }
}
