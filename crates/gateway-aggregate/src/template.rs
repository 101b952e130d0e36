//! Part templates: the path (`/users/{id}?expand={query.expand}`) and header values of a part,
//! compiled once, filled per request with each value encoded for where it lands.
//!
//! | placeholder      | value                                                          |
//! |------------------|----------------------------------------------------------------|
//! | `{name}`         | the route's path parameter (`{*rest}` or `{rest}`: catch-all)  |
//! | `{query.NAME}`   | the caller's query parameter `NAME` (first one), form-decoded  |
//! | `{claim.NAME}`   | the caller's claim `NAME` (string, number or boolean)          |
//! | `{part.a.b}`     | field `a.b` of part `part`'s JSON answer (`.0` indexes arrays) |
//!
//! Every value is first taken back to its raw bytes (path parameters percent-decoded,
//! query parameters form-decoded), then encoded for its position:
//! - in a path segment, every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) is
//!   percent-encoded, so `/`, `?`, `#`, `%` and `;` in a claim cannot change the path; a
//!   segment a value makes empty, `.` or `..` is refused (it would drop or climb a segment);
//! - the route's catch-all keeps its `/` and encodes each segment the same way;
//! - in the query, every byte but the unreserved ones is percent-encoded (`&`, `=`, `+`);
//! - in a header value, the bytes go as they are and must form a valid header value (no
//!   control characters).

use std::borrow::Cow;

use gateway_core::Principal;
use http::uri::PathAndQuery;
use http::HeaderValue;
use serde_json::Value;

use crate::error::PartError;

/// Where a value lands, which decides its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Inside one path segment.
    Segment,
    /// The route's catch-all in the path: `/` kept.
    CatchAll,
    Query,
    Header,
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A path parameter of the route (percent-encoded text as the router captured it).
    Param(String),
    Query(String),
    Claim(String),
    /// A field of an earlier part's answer: the part's index and the field path.
    Field {
        part: usize,
        path: Vec<String>,
    },
}

#[derive(Debug, Clone)]
enum Piece {
    Literal(String),
    Value { source: Source, position: Position },
}

/// What a template may refer to, known when the route is compiled.
pub(crate) struct Scope<'a> {
    /// Path parameter names of the route's `path` template.
    pub params: &'a [String],
    /// The route's catch-all parameter, if its template ends with `{*name}`.
    pub catch_all: Option<&'a str>,
    /// Part names by index.
    pub parts: &'a [String],
    /// Whether the route authenticates callers (`{claim.NAME}` needs it).
    pub has_auth: bool,
}

/// A compiled path or header template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    pieces: Vec<Piece>,
}

/// What a template is filled from, per request.
pub(crate) struct Values<'a> {
    pub params: &'a [(&'a str, &'a str)],
    pub query: Option<&'a str>,
    pub principal: Option<&'a Principal>,
    /// Raw answers of finished parts, by index (`None`: not finished or failed).
    pub answers: &'a [Option<Value>],
}

impl Template {
    /// Compiles a part's `path` (which must start with `/`; `?` starts the query).
    pub(crate) fn path(text: &str, scope: &Scope<'_>) -> Result<Template, String> {
        if !text.starts_with('/') {
            return Err(format!("path `{text}` must start with `/`"));
        }
        if text.contains('#') {
            return Err(format!("path `{text}` must not contain `#`"));
        }
        let template = Template::parse(text, scope, false)?;
        let literal_path = text.split('?').next().unwrap_or(text);
        if literal_path.split('/').any(|s| s == "." || s == "..") {
            return Err(format!("path `{text}` must not contain `.` or `..` segments"));
        }
        // Check that the literal text is a valid target, with every value a plain `x`.
        let sample = template.sample();
        PathAndQuery::try_from(sample.as_str()).map_err(|_| format!("path `{text}` is not a valid request target"))?;
        Ok(template)
    }

    /// Compiles a part header's value.
    pub(crate) fn header(text: &str, scope: &Scope<'_>) -> Result<Template, String> {
        let template = Template::parse(text, scope, true)?;
        HeaderValue::from_str(&template.sample()).map_err(|_| format!("header value `{text}` is not valid"))?;
        Ok(template)
    }

    fn parse(text: &str, scope: &Scope<'_>, header: bool) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut in_query = false;
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find(['{', '}']) else {
                pieces.push(Piece::Literal(rest.to_owned()));
                break;
            };
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unbalanced `}}` in `{text}`"));
            }
            let literal = &rest[..open];
            if !literal.is_empty() {
                pieces.push(Piece::Literal(literal.to_owned()));
            }
            in_query |= literal.contains('?');
            let after = &rest[open + 1..];
            let close = after.find(['{', '}']).filter(|&i| after.as_bytes()[i] == b'}');
            let Some(close) = close else {
                return Err(format!("unbalanced `{{` in `{text}`"));
            };
            let inner = &after[..close];
            let source = source(inner, scope).map_err(|e| format!("`{{{inner}}}` in `{text}`: {e}"))?;
            let position = if header {
                Position::Header
            } else if in_query {
                Position::Query
            } else if matches!(&source, Source::Param(p) if Some(p.as_str()) == scope.catch_all) {
                Position::CatchAll
            } else {
                Position::Segment
            };
            pieces.push(Piece::Value { source, position });
            rest = &after[close + 1..];
        }
        Ok(Template { pieces })
    }

    /// The template with every value replaced by `x`, to check the literal text.
    fn sample(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Literal(l) => l.as_str(),
                Piece::Value { .. } => "x",
            })
            .collect()
    }

    /// The parts whose answers this template reads.
    pub(crate) fn parts(&self) -> impl Iterator<Item = usize> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Value { source: Source::Field { part, .. }, .. } => Some(*part),
            _ => None,
        })
    }

    /// Fills a path template.
    pub(crate) fn render_path(&self, values: &Values<'_>, names: &[String]) -> Result<PathAndQuery, PartError> {
        let mut out = String::new();
        // While still in the path: where the current segment starts, and the source of a
        // value put in it (a segment made with a value must not be empty, `.` or `..`).
        let mut in_path = true;
        let mut segment_start = 0;
        let mut filled_by: Option<&Source> = None;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(literal) => {
                    for c in literal.chars() {
                        if in_path && (c == '/' || c == '?') {
                            check_segment(&out[segment_start..], filled_by, names)?;
                            in_path = c == '/';
                            segment_start = out.len() + 1;
                            filled_by = None;
                        }
                        out.push(c);
                    }
                }
                Piece::Value { source, position } => {
                    let raw = lookup(source, values, names)?;
                    match position {
                        Position::Segment => {
                            encode_into(&mut out, &raw);
                            filled_by = Some(source);
                        }
                        Position::CatchAll => {
                            for (i, segment) in raw.split(|&b| b == b'/').enumerate() {
                                if i > 0 {
                                    check_segment(&out[segment_start..], filled_by, names)?;
                                    out.push('/');
                                    segment_start = out.len();
                                    filled_by = None;
                                }
                                encode_into(&mut out, segment);
                                if *segment == *b"." || *segment == *b".." {
                                    filled_by = Some(source);
                                }
                            }
                        }
                        Position::Query | Position::Header => encode_into(&mut out, &raw),
                    }
                }
            }
        }
        if in_path {
            check_segment(&out[segment_start..], filled_by, names)?;
        }
        PathAndQuery::try_from(out).map_err(|e| PartError::BadValue(format!("the filled path is not valid: {e}")))
    }

    /// Fills a header template.
    pub(crate) fn render_header(&self, values: &Values<'_>, names: &[String]) -> Result<HeaderValue, PartError> {
        let mut out = Vec::new();
        let mut sources = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.extend_from_slice(l.as_bytes()),
                Piece::Value { source, .. } => {
                    out.extend_from_slice(&lookup(source, values, names)?);
                    sources.push(source);
                }
            }
        }
        HeaderValue::from_bytes(&out).map_err(|_| {
            bad_value(&sources, format!("{} cannot go in a header (control characters)", describe_all(&sources, names)))
        })
    }
}

/// A path segment that a value helped make must not be empty, `.` or `..`: it would
/// drop or climb a segment of the path the configuration meant.
fn check_segment(segment: &str, filled_by: Option<&Source>, names: &[String]) -> Result<(), PartError> {
    match filled_by {
        Some(source) if segment.is_empty() || segment == "." || segment == ".." => Err(bad_value(
            &[source],
            format!("{} makes the path segment `{segment}`, which cannot be a path segment", describe(source, names)),
        )),
        _ => Ok(()),
    }
}

/// Parses what is between `{` and `}`.
fn source(inner: &str, scope: &Scope<'_>) -> Result<Source, String> {
    if let Some(name) = inner.strip_prefix('*') {
        return match scope.catch_all {
            Some(c) if c == name => Ok(Source::Param(name.to_owned())),
            _ => Err("the route's path has no such catch-all parameter".to_owned()),
        };
    }
    let Some((head, tail)) = inner.split_once('.') else {
        if scope.params.iter().any(|p| p == inner) {
            return Ok(Source::Param(inner.to_owned()));
        }
        return Err(if scope.params.is_empty() {
            "the route's `path` defines no parameters".to_owned()
        } else {
            format!("the route's `path` defines no such parameter (it has: {})", scope.params.join(", "))
        });
    };
    if tail.is_empty() {
        return Err("empty name after `.`".to_owned());
    }
    match head {
        "query" => Ok(Source::Query(tail.to_owned())),
        "claim" if scope.has_auth => Ok(Source::Claim(tail.to_owned())),
        "claim" => Err("the route has no `auth`, so there are no claims".to_owned()),
        part => {
            let index = scope
                .parts
                .iter()
                .position(|n| n == part)
                .ok_or_else(|| format!("no part is named `{part}` (names: {})", scope.parts.join(", ")))?;
            let path: Vec<String> = tail.split('.').map(str::to_owned).collect();
            if path.iter().any(String::is_empty) {
                return Err("empty field name".to_owned());
            }
            Ok(Source::Field { part: index, path })
        }
    }
}

/// A value that cannot be used: the client's fault unless it came from a part's answer.
fn bad_value(sources: &[&Source], message: String) -> PartError {
    if sources.iter().any(|s| matches!(s, Source::Field { .. })) {
        PartError::BadValue(message)
    } else {
        PartError::BadInput(message)
    }
}

fn describe_all(sources: &[&Source], names: &[String]) -> String {
    sources.iter().map(|s| describe(s, names)).collect::<Vec<_>>().join(", ")
}

/// Names a value's source for messages.
fn describe(source: &Source, names: &[String]) -> String {
    match source {
        Source::Param(name) => format!("path parameter `{name}`"),
        Source::Query(name) => format!("query parameter `{name}`"),
        Source::Claim(name) => format!("claim `{name}`"),
        Source::Field { part, path } => {
            format!("field `{}` of part `{}`", path.join("."), names.get(*part).map_or("?", String::as_str))
        }
    }
}

/// The raw bytes of a value.
fn lookup<'v>(source: &Source, values: &Values<'v>, names: &[String]) -> Result<Cow<'v, [u8]>, PartError> {
    match source {
        Source::Param(name) => {
            let value = values.params.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
            let value =
                value.ok_or_else(|| PartError::BadValue(format!("path parameter `{name}` was not captured")))?;
            Ok(percent_decode(value, false))
        }
        Source::Query(name) => {
            query_param(values.query.unwrap_or(""), name).ok_or_else(|| PartError::MissingQuery(name.clone()))
        }
        Source::Claim(name) => match values.principal.and_then(|p| p.claim_str(name)) {
            Some(Cow::Borrowed(s)) => Ok(Cow::Borrowed(s.as_bytes())),
            Some(Cow::Owned(s)) => Ok(Cow::Owned(s.into_bytes())),
            None => Err(PartError::MissingClaim(name.clone())),
        },
        Source::Field { part, path } => {
            let missing = || PartError::MissingField {
                part: names.get(*part).cloned().unwrap_or_default(),
                field: path.join("."),
            };
            let answer = values.answers.get(*part).and_then(Option::as_ref).ok_or_else(missing)?;
            let found = path.iter().try_fold(answer, |v, key| match v {
                Value::Object(map) => map.get(key),
                Value::Array(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            });
            match found {
                Some(Value::String(s)) => Ok(Cow::Owned(s.clone().into_bytes())),
                Some(Value::Number(n)) => Ok(Cow::Owned(n.to_string().into_bytes())),
                Some(Value::Bool(b)) => Ok(Cow::Owned(b.to_string().into_bytes())),
                _ => Err(missing()),
            }
        }
    }
}

/// The first value of `name` in a query string, form-decoded (`+` is a space).
fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, [u8]>> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (*percent_decode(key, true) == *name.as_bytes()).then(|| percent_decode(value, true))
    })
}

/// Percent-decodes; `plus` also turns `+` into a space (form encoding). A `%` not followed by
/// two hex digits stays as it is.
fn percent_decode(text: &str, plus: bool) -> Cow<'_, [u8]> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || (plus && b == b'+')) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => match (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends `raw` with every byte but the unreserved ones (RFC 3986) percent-encoded.
fn encode_into(out: &mut String, raw: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in raw {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}
