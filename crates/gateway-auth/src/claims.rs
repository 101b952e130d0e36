//! A route's `require_claims`, compiled once and checked against a verified identity.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Claims whose value is a space-separated list of granted scopes (RFC 8693 `scope`,
/// and `scp` as Azure AD and others name it).
const SCOPE_CLAIMS: [&str; 2] = ["scope", "scp"];

/// What one required claim must hold.
#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    /// Every listed scope must be granted by `scope` or `scp` (a space-separated
    /// string, or an array of scopes).
    Scopes(Vec<String>),
    /// The claim equals this text (numbers and booleans by their text), or is an array
    /// with such an element.
    Exact(String),
}

/// The compiled `require_claims` of one route: all must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RequiredClaims {
    checks: Vec<(String, Requirement)>,
}

impl RequiredClaims {
    pub(crate) fn compile(required: &BTreeMap<String, String>) -> Self {
        let checks = required
            .iter()
            .map(|(claim, want)| {
                let requirement = if SCOPE_CLAIMS.contains(&claim.as_str()) {
                    Requirement::Scopes(want.split_whitespace().map(str::to_owned).collect())
                } else {
                    Requirement::Exact(want.clone())
                };
                (claim.clone(), requirement)
            })
            .collect();
        RequiredClaims { checks }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// `Err(claim)` names the first requirement that does not hold.
    pub(crate) fn check<'a>(&'a self, claims: &Map<String, Value>) -> Result<(), &'a str> {
        for (claim, requirement) in &self.checks {
            let ok = match requirement {
                Requirement::Scopes(wanted) => {
                    let granted: Vec<&str> =
                        SCOPE_CLAIMS.iter().filter_map(|c| claims.get(*c)).flat_map(scopes).collect();
                    if wanted.is_empty() {
                        // `scope = ""`: only asks that some scope claim is there.
                        SCOPE_CLAIMS.iter().any(|c| claims.contains_key(*c))
                    } else {
                        wanted.iter().all(|w| granted.contains(&w.as_str()))
                    }
                }
                Requirement::Exact(want) => lookup(claims, claim).is_some_and(|value| matches_exact(value, want)),
            };
            if !ok {
                return Err(claim);
            }
        }
        Ok(())
    }
}

/// The scopes a `scope`/`scp` value grants.
fn scopes(value: &Value) -> Vec<&str> {
    match value {
        Value::String(s) => s.split_whitespace().collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).flat_map(str::split_whitespace).collect(),
        _ => Vec::new(),
    }
}

/// A claim by its name; a name with dots that is not itself a claim walks into
/// objects (`realm_access.roles`).
fn lookup<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}

fn matches_exact(value: &Value, want: &str) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|item| scalar_eq(item, want)),
        other => scalar_eq(other, want),
    }
}

fn scalar_eq(value: &Value, want: &str) -> bool {
    match value {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => (if *b { "true" } else { "false" }) == want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn required(pairs: &[(&str, &str)]) -> RequiredClaims {
        RequiredClaims::compile(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn exact_values_numbers_booleans_and_arrays() {
        let c = claims(json!({"role": "admin", "level": 3, "staff": true, "groups": ["a", "b"], "n": null}));
        assert_eq!(required(&[("role", "admin")]).check(&c), Ok(()));
        assert_eq!(required(&[("role", "Admin")]).check(&c), Err("role"));
        assert_eq!(required(&[("level", "3")]).check(&c), Ok(()));
        assert_eq!(required(&[("staff", "true")]).check(&c), Ok(()));
        assert_eq!(required(&[("groups", "b")]).check(&c), Ok(()));
        assert_eq!(required(&[("groups", "c")]).check(&c), Err("groups"));
        assert_eq!(required(&[("n", "null")]).check(&c), Err("n"));
        assert_eq!(required(&[("absent", "x")]).check(&c), Err("absent"));
        assert_eq!(required(&[("role", "admin"), ("level", "4")]).check(&c), Err("level"));
    }

    #[test]
    fn scopes_as_string_array_and_scp() {
        let c = claims(json!({"scope": "users:read  users:write"}));
        assert_eq!(required(&[("scope", "users:read")]).check(&c), Ok(()));
        assert_eq!(required(&[("scope", "users:write users:read")]).check(&c), Ok(()));
        assert_eq!(required(&[("scope", "users:read admin")]).check(&c), Err("scope"));
        assert_eq!(required(&[("scope", "users")]).check(&c), Err("scope"), "no prefix match");
        let scp = claims(json!({"scp": ["users:read", "orders:read"]}));
        assert_eq!(required(&[("scope", "orders:read")]).check(&scp), Ok(()));
        assert_eq!(required(&[("scp", "users:read")]).check(&scp), Ok(()));
        assert_eq!(required(&[("scope", "x")]).check(&claims(json!({}))), Err("scope"));
    }

    #[test]
    fn dotted_names_walk_objects() {
        let c = claims(json!({"realm_access": {"roles": ["admin"]}, "a.b": "flat"}));
        assert_eq!(required(&[("realm_access.roles", "admin")]).check(&c), Ok(()));
        assert_eq!(required(&[("a.b", "flat")]).check(&c), Ok(()));
        assert_eq!(required(&[("realm_access.nope", "admin")]).check(&c), Err("realm_access.nope"));
    }
}
