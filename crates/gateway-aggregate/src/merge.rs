//! Shaping a part's answer (`select`, `rename`) and merging the answers into one document.

use serde_json::{Map, Value};

/// A part's `select` and `rename`, compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shape {
    /// Top-level fields to keep; empty keeps all.
    pub select: Vec<String>,
    /// `(old, new)` top-level renames, applied after `select`.
    pub rename: Vec<(String, String)>,
}

impl Shape {
    pub(crate) fn is_identity(&self) -> bool {
        self.select.is_empty() && self.rename.is_empty()
    }

    /// Applies `select` then `rename` to an object, or to each object of an array; other
    /// values (and non-object array items) are left as they are.
    pub(crate) fn apply(&self, value: Value) -> Value {
        if self.is_identity() {
            return value;
        }
        match value {
            Value::Object(map) => Value::Object(self.apply_object(map)),
            Value::Array(items) => Value::Array(
                items
                    .into_iter()
                    .map(|item| match item {
                        Value::Object(map) => Value::Object(self.apply_object(map)),
                        other => other,
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    fn apply_object(&self, mut map: Map<String, Value>) -> Map<String, Value> {
        if !self.select.is_empty() {
            map.retain(|key, _| self.select.iter().any(|s| s == key));
        }
        // Renames are simultaneous (`a -> b`, `b -> c` moves both) and a renamed field wins
        // over a field that already had the new name.
        let moved: Vec<(String, Value)> =
            self.rename.iter().filter_map(|(old, new)| map.remove(old).map(|v| (new.clone(), v))).collect();
        for (new, value) in moved {
            map.insert(new, value);
        }
        map
    }
}

/// Merges `from` into `into`: objects field by field, recursively; anything else (arrays,
/// scalars, an object meeting a non-object) replaces what was there.
pub(crate) fn deep_merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(target), Value::Object(source)) => deep_merge_map(target, source),
        (slot, value) => *slot = value,
    }
}

pub(crate) fn deep_merge_map(target: &mut Map<String, Value>, source: Map<String, Value>) {
    for (key, value) in source {
        match target.get_mut(&key) {
            Some(existing) => deep_merge(existing, value),
            None => {
                target.insert(key, value);
            }
        }
    }
}
