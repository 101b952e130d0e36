//! Header transforms (`request_headers`, `response_headers`): `remove`, `set` and `add`,
//! compiled once per configuration.
//!
//! [`CompiledTransform::apply`] works in a fixed order, whatever the order in the file:
//!
//! 1. `remove`: every listed header goes, all its values;
//! 2. `set`: the header gets exactly this one value, replacing any it had;
//! 3. `add`: the value is appended, beside any the header already has.
//!
//! Values may hold placeholders, parsed once at compile time:
//!
//! | placeholder | value |
//! |---|---|
//! | `{request_id}` | the request id |
//! | `{client_ip}` | the client address, as resolved through `trusted_proxies` |
//! | `{claim.NAME}` | claim `NAME` of the authenticated principal (strings as they are, numbers and booleans printed) |
//! | `{consumer}` | the API key's consumer |
//! | `{route}` | the route's name |
//!
//! `{{` and `}}` stand for literal braces; any other `{...}` is a compile error, so a typo
//! fails at load time instead of sending `{claim.sbu}` upstream.
//!
//! A placeholder with no value (no principal, no such claim, a claim that is an object) leaves
//! the header **unset**: an `add` appends nothing, and a `set` removes the header, so that a
//! client can never supply the value that `set` would have put there (`x-user = "{claim.sub}"`
//! on an anonymous request sends no `x-user` at all, not the client's). A filled-in value that
//! is not a valid header value (a claim with a control character) is treated the same way.
//! Applying never panics.
//!
//! Request transforms run after authentication (so identity placeholders have a principal);
//! response transforms run on every answer, cached ones included.

use std::fmt::Write as _;
use std::net::IpAddr;

use gateway_core::Principal;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

/// What placeholders are filled from, for one request.
#[derive(Debug, Clone, Copy)]
pub struct TransformContext<'a> {
    /// The request id (`x-request-id`).
    pub request_id: &'a str,
    /// The client address, as resolved through `trusted_proxies`.
    pub client_ip: IpAddr,
    /// The authenticated principal, if the route authenticated the request.
    pub principal: Option<&'a Principal>,
    /// The route's name.
    pub route: &'a str,
}

/// One piece of a value template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    RequestId,
    ClientIp,
    Claim(String),
    Consumer,
    Route,
}

/// A header value: fixed (validated at compile time) or a template filled per request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Fixed(HeaderValue),
    Template(Box<[Segment]>),
}

impl Value {
    fn parse(text: &str) -> Result<Value, String> {
        let segments = parse_template(text)?;
        match segments.as_slice() {
            [] => Ok(Value::Fixed(HeaderValue::from_static(""))),
            [Segment::Literal(s)] => {
                HeaderValue::from_str(s).map(Value::Fixed).map_err(|_| "the value has control characters".to_owned())
            }
            _ => {
                for segment in &segments {
                    if let Segment::Literal(s) = segment {
                        if HeaderValue::from_str(s).is_err() {
                            return Err("the value has control characters".to_owned());
                        }
                    }
                }
                Ok(Value::Template(segments.into_boxed_slice()))
            }
        }
    }

    /// The value for one request; `None` when a placeholder has no value or the result is not
    /// a valid header value.
    fn render(&self, ctx: &TransformContext<'_>) -> Option<HeaderValue> {
        let segments = match self {
            Value::Fixed(v) => return Some(v.clone()),
            Value::Template(segments) => segments,
        };
        let mut out = String::with_capacity(64);
        for segment in segments.iter() {
            match segment {
                Segment::Literal(s) => out.push_str(s),
                Segment::RequestId => out.push_str(ctx.request_id),
                Segment::ClientIp => {
                    let _ = write!(out, "{}", ctx.client_ip);
                }
                Segment::Claim(name) => out.push_str(&ctx.principal?.claim_str(name)?),
                Segment::Consumer => out.push_str(ctx.principal?.consumer.as_deref()?),
                Segment::Route => out.push_str(ctx.route),
            }
        }
        HeaderValue::from_str(&out).ok()
    }
}

fn parse_template(text: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(i) = rest.find(['{', '}']) {
        literal.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{") {
            literal.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            literal.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err("a lone `}` (write `}}` for a literal brace)".to_owned());
        } else {
            let end = tail.find('}').ok_or("an unclosed `{` (write `{{` for a literal brace)")?;
            let name = &tail[1..end];
            let segment = match name {
                "request_id" => Segment::RequestId,
                "client_ip" => Segment::ClientIp,
                "consumer" => Segment::Consumer,
                "route" => Segment::Route,
                _ => match name.strip_prefix("claim.") {
                    Some(claim) if !claim.is_empty() && !claim.contains(['{', ' ']) => Segment::Claim(claim.to_owned()),
                    _ => {
                        return Err(format!(
                            "unknown placeholder `{{{name}}}`: use {{request_id}}, {{client_ip}}, {{claim.NAME}}, \
                             {{consumer}} or {{route}} (`{{{{` for a literal brace)"
                        ))
                    }
                },
            };
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(segment);
            rest = &tail[end + 1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Literal(literal));
    }
    Ok(segments)
}

/// A compiled `request_headers` or `response_headers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledTransform {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, Value)]>,
    add: Box<[(HeaderName, Value)]>,
}

impl CompiledTransform {
    /// Validates every name and value and parses the placeholders. The error names the
    /// header at fault; the caller prefixes the route and key.
    pub fn compile(config: &gateway_config::schema::HeaderTransform) -> Result<CompiledTransform, String> {
        let name = |op: &str, n: &str| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("{op}: `{n}` is not a valid header name"))
        };
        let pairs = |op: &str, map: &std::collections::BTreeMap<String, String>| {
            map.iter()
                .map(|(n, v)| Ok((name(op, n)?, Value::parse(v).map_err(|e| format!("{op}: `{n}`: {e}"))?)))
                .collect::<Result<Box<[_]>, String>>()
        };
        Ok(CompiledTransform {
            remove: config.remove.iter().map(|n| name("remove", n)).collect::<Result<_, _>>()?,
            set: pairs("set", &config.set)?,
            add: pairs("add", &config.add)?,
        })
    }

    /// Whether this transform does nothing (so the caller can skip it).
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies the transform: remove, then set, then add (see the module docs).
    pub fn apply(&self, headers: &mut HeaderMap, ctx: &TransformContext<'_>) {
        for name in self.remove.iter() {
            headers.remove(name);
        }
        for (name, value) in self.set.iter() {
            match value.render(ctx) {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        for (name, value) in self.add.iter() {
            if let Some(v) = value.render(ctx) {
                headers.append(name.clone(), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_config::schema::HeaderTransform;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn transform(add: &[(&str, &str)], set: &[(&str, &str)], remove: &[&str]) -> Result<CompiledTransform, String> {
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        CompiledTransform::compile(&HeaderTransform {
            add: map(add),
            set: map(set),
            remove: remove.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        })
    }

    fn principal() -> Principal {
        let claims = serde_json::json!({"sub": "u-1", "tier": 3, "evil": "a\r\nb", "obj": {"a": 1}});
        Principal {
            provider: Arc::from("main"),
            subject: Some("u-1".into()),
            consumer: Some("acme".into()),
            claims: claims.as_object().cloned().unwrap_or_default(),
        }
    }

    fn ctx(principal: Option<&Principal>) -> TransformContext<'_> {
        TransformContext { request_id: "rid-1", client_ip: "10.1.2.3".parse().expect("ip"), principal, route: "users" }
    }

    fn values<'a>(h: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        h.get_all(name).iter().map(|v| v.to_str().unwrap_or("<bad>")).collect()
    }

    #[test]
    fn placeholders_are_filled() {
        let t = transform(
            &[],
            &[
                ("x-rid", "req={request_id}"),
                ("x-ip", "{client_ip}"),
                ("x-user", "{claim.sub}/{claim.tier}"),
                ("x-consumer", "{consumer}"),
                ("x-route", "{route}"),
                ("x-braces", "{{literal}} {request_id}"),
                ("x-plain", "prod"),
            ],
            &[],
        )
        .expect("compiles");
        let p = principal();
        let mut h = HeaderMap::new();
        t.apply(&mut h, &ctx(Some(&p)));
        assert_eq!(values(&h, "x-rid"), ["req=rid-1"]);
        assert_eq!(values(&h, "x-ip"), ["10.1.2.3"]);
        assert_eq!(values(&h, "x-user"), ["u-1/3"]);
        assert_eq!(values(&h, "x-consumer"), ["acme"]);
        assert_eq!(values(&h, "x-route"), ["users"]);
        assert_eq!(values(&h, "x-braces"), ["{literal} rid-1"]);
        assert_eq!(values(&h, "x-plain"), ["prod"]);
    }

    #[test]
    fn remove_then_set_then_add() {
        let t = transform(
            &[("x-tag", "added"), ("x-gone", "back")],
            &[("x-tag", "set"), ("x-env", "prod")],
            &["x-gone", "x-env", "x-debug"],
        )
        .expect("compiles");
        let mut h = HeaderMap::new();
        h.append("x-tag", HeaderValue::from_static("client-1"));
        h.append("x-tag", HeaderValue::from_static("client-2"));
        h.insert("x-gone", HeaderValue::from_static("client"));
        h.insert("x-debug", HeaderValue::from_static("1"));
        h.insert("x-env", HeaderValue::from_static("dev"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        t.apply(&mut h, &ctx(None));
        assert_eq!(values(&h, "x-tag"), ["set", "added"], "set replaced both, add appended after");
        assert_eq!(values(&h, "x-gone"), ["back"], "removed, then added");
        assert_eq!(values(&h, "x-env"), ["prod"], "removed, then set");
        assert!(h.get("x-debug").is_none());
        assert_eq!(values(&h, "x-other"), ["kept"]);
    }

    #[test]
    fn missing_or_bad_values_leave_the_header_unset() {
        let t = transform(
            &[("x-added", "{claim.nope}")],
            &[("x-user", "{claim.sub}"), ("x-evil", "{claim.evil}"), ("x-obj", "{claim.obj}"), ("x-c", "{consumer}")],
            &[],
        )
        .expect("compiles");
        // Anonymous: the client's own x-user must not survive a `set` that had no value.
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("spoofed"));
        t.apply(&mut h, &ctx(None));
        assert!(h.get("x-user").is_none());
        assert!(h.get("x-added").is_none());
        assert!(h.get("x-c").is_none());
        // A claim with CR LF, and an object claim, are skipped without a panic.
        let p = principal();
        let mut h = HeaderMap::new();
        h.insert("x-evil", HeaderValue::from_static("client"));
        t.apply(&mut h, &ctx(Some(&p)));
        assert!(h.get("x-evil").is_none());
        assert!(h.get("x-obj").is_none());
        assert_eq!(values(&h, "x-user"), ["u-1"]);
        assert_eq!(values(&h, "x-c"), ["acme"]);
    }

    #[test]
    fn compile_errors() {
        assert!(transform(&[], &[("bad name", "v")], &[]).is_err());
        assert!(transform(&[], &[], &["bad name"]).is_err());
        assert!(transform(&[("x", "a\nb")], &[], &[]).is_err());
        assert!(transform(&[("x", "{a\n}{request_id}")], &[], &[]).is_err());
        let unknown = transform(&[], &[("x", "{claim.sub} {usr}")], &[]).expect_err("unknown placeholder");
        assert!(unknown.contains("`{usr}`"), "{unknown}");
        assert!(transform(&[], &[("x", "{request_id")], &[]).is_err());
        assert!(transform(&[], &[("x", "a}b")], &[]).is_err());
        assert!(transform(&[], &[("x", "{claim.}")], &[]).is_err());
        assert!(transform(&[], &[], &[]).expect("empty").is_empty());
        let t = CompiledTransform::compile(&HeaderTransform {
            add: BTreeMap::new(),
            set: BTreeMap::from([("X-Upper".to_owned(), "".to_owned())]),
            remove: vec!["Server".into()],
        })
        .expect("names are case-insensitive");
        let mut h = HeaderMap::new();
        h.insert("server", HeaderValue::from_static("nginx"));
        t.apply(&mut h, &ctx(None));
        assert!(h.get("server").is_none());
        assert_eq!(values(&h, "x-upper"), [""]);
    }
}
