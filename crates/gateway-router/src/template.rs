//! Path templates (`/users/{id}`, `/files/{*rest}`) and rewrite templates.

use std::cmp::Ordering;
use std::sync::Arc;

use crate::params::Params;

/// A compiled `path` template.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    /// The segments before the catch-all, each one whole path segment.
    segments: Box<[Segment]>,
    /// The final `{*name}`, if any.
    catch_all: Option<Arc<str>>,
    /// Literal segments: the first precedence key among templates.
    literals: usize,
    /// Number of parameters, to size the captured [`Params`].
    params: usize,
}

#[derive(Debug, Clone)]
enum Segment {
    /// Compared exactly (case-sensitive) with the normalised segment.
    Literal(Box<str>),
    /// `{name}`: any non-empty segment.
    Param(Arc<str>),
}

impl Segment {
    fn is_literal(&self) -> bool {
        matches!(self, Segment::Literal(_))
    }
}

/// Whether `path` is a template rather than an exact path.
pub(crate) fn is_template(path: &str) -> bool {
    path.contains(['{', '}'])
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Template {
    /// Parses a template that starts with `/` and is otherwise in normal form.
    pub(crate) fn parse(path: &str) -> Result<Template, String> {
        let body = path.strip_prefix('/').ok_or("path must start with '/'")?;
        let mut segments = Vec::new();
        let mut catch_all = None;
        let mut names: Vec<&str> = Vec::new();
        let mut parts = body.split('/').peekable();
        while let Some(seg) = parts.next() {
            if !is_template(seg) {
                segments.push(Segment::Literal(seg.into()));
                continue;
            }
            let inner = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
            let inner = match inner {
                Some(inner) if !is_template(inner) => inner,
                _ => {
                    let opens = seg.matches('{').count();
                    let closes = seg.matches('}').count();
                    let balanced = opens == closes && seg.find('{') < seg.find('}');
                    return Err(if balanced {
                        format!("a parameter must be a whole segment: \"{seg}\" (write \"/{{name}}\")")
                    } else {
                        format!("unbalanced '{{' or '}}' in segment \"{seg}\"")
                    });
                }
            };
            let (name, is_catch_all) = match inner.strip_prefix('*') {
                Some(name) => (name, true),
                None => (inner, false),
            };
            if !valid_name(name) {
                return Err(format!(
                    "invalid parameter name \"{name}\" in \"{seg}\": use letters, digits and '_', not starting with a digit"
                ));
            }
            if names.contains(&name) {
                return Err(format!("parameter \"{name}\" is defined twice"));
            }
            names.push(name);
            if is_catch_all {
                if parts.peek().is_some() {
                    return Err(format!("catch-all \"{seg}\" must be the last segment"));
                }
                catch_all = Some(Arc::from(name));
            } else {
                segments.push(Segment::Param(Arc::from(name)));
            }
        }
        let literals = segments.iter().filter(|s| s.is_literal()).count();
        Ok(Template { segments: segments.into(), catch_all, literals, params: names.len() })
    }

    /// Matches without allocating.
    #[inline]
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.walk(path, |_, _| {})
    }

    /// Matches and captures the parameters.
    pub(crate) fn captures(&self, path: &str) -> Option<Params> {
        let mut params = Params::with_capacity(self.params);
        self.walk(path, |name, value| params.push(name.clone(), value)).then_some(params)
    }

    fn walk<'p>(&self, path: &'p str, mut on_param: impl FnMut(&Arc<str>, &'p str)) -> bool {
        let mut cursor = path;
        for segment in &*self.segments {
            let Some(rest) = cursor.strip_prefix('/') else {
                return false;
            };
            let (text, after) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match segment {
                Segment::Literal(literal) if text != &**literal => return false,
                Segment::Literal(_) => {}
                Segment::Param(_) if text.is_empty() => return false,
                Segment::Param(name) => on_param(name, text),
            }
            cursor = after;
        }
        match &self.catch_all {
            None => cursor.is_empty(),
            // `/files/{*rest}` matches `/files` and `/files/` with an empty rest.
            Some(name) => match cursor.strip_prefix('/') {
                Some(rest) => {
                    on_param(name, rest);
                    true
                }
                None if cursor.is_empty() => {
                    on_param(name, "");
                    true
                }
                None => false,
            },
        }
    }

    /// The shared name of a parameter this template defines.
    pub(crate) fn param(&self, name: &str) -> Option<&Arc<str>> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Param(n) => Some(n),
                Segment::Literal(_) => None,
            })
            .chain(self.catch_all.iter())
            .find(|n| &***n == name)
    }

    /// `Less` when `self` is more specific: more literal segments; then no catch-all
    /// before a catch-all; then more segments; then the template whose first differing
    /// segment is a literal (`/a/{x}` before `/{x}/b`).
    pub(crate) fn cmp_specificity(&self, other: &Template) -> Ordering {
        other
            .literals
            .cmp(&self.literals)
            .then_with(|| self.catch_all.is_some().cmp(&other.catch_all.is_some()))
            .then_with(|| other.segments.len().cmp(&self.segments.len()))
            .then_with(|| {
                for (a, b) in self.segments.iter().zip(other.segments.iter()) {
                    match (a.is_literal(), b.is_literal()) {
                        (true, false) => return Ordering::Less,
                        (false, true) => return Ordering::Greater,
                        _ => {}
                    }
                }
                Ordering::Equal
            })
    }

    /// Whether both templates match exactly the same paths (names aside).
    pub(crate) fn same_shape(&self, other: &Template) -> bool {
        self.catch_all.is_some() == other.catch_all.is_some()
            && self.segments.len() == other.segments.len()
            && self.segments.iter().zip(other.segments.iter()).all(|(a, b)| match (a, b) {
                (Segment::Literal(x), Segment::Literal(y)) => x == y,
                (Segment::Param(_), Segment::Param(_)) => true,
                _ => false,
            })
    }
}

/// One piece of a compiled `rewrite` template.
#[derive(Debug, Clone)]
pub(crate) enum RewritePart {
    Literal(Box<str>),
    /// `{name}`, `{rest}` or `{*rest}`: the captured value, which may contain `/`.
    Param(Arc<str>),
}

/// Parses `rewrite`; `{name}` may appear anywhere (also inside a segment) but only with
/// names that `template` defines (`None`: the route defines no names).
pub(crate) fn parse_rewrite(rewrite: &str, template: Option<&Template>) -> Result<Box<[RewritePart]>, String> {
    let mut parts = Vec::new();
    let mut rest = rewrite;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err(format!("unbalanced '}}' in rewrite \"{rewrite}\""));
        }
        if open > 0 {
            parts.push(RewritePart::Literal(rest[..open].into()));
        }
        let after = &rest[open + 1..];
        let close = match after.find(['{', '}']) {
            Some(close) if after[close..].starts_with('}') => close,
            _ => return Err(format!("unbalanced '{{' in rewrite \"{rewrite}\"")),
        };
        let raw_name = &after[..close];
        let name = raw_name.strip_prefix('*').unwrap_or(raw_name);
        let Some(shared) = template.and_then(|t| t.param(name)) else {
            return Err(format!("rewrite uses {{{raw_name}}} but the route's path defines no parameter \"{name}\""));
        };
        parts.push(RewritePart::Param(shared.clone()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(RewritePart::Literal(rest.into()));
    }
    Ok(parts.into())
}

/// Fills a rewrite template; a name missing from `params` becomes empty.
pub(crate) fn fill(parts: &[RewritePart], params: &Params) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            RewritePart::Literal(text) => out.push_str(text),
            RewritePart::Param(name) => out.push_str(params.get(name).unwrap_or("")),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn caps(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        let t = Template::parse(t).unwrap();
        assert_eq!(t.matches(path), t.captures(path).is_some());
        t.captures(path).map(|p| p.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect())
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn params_match_one_whole_non_empty_segment() {
        assert_eq!(caps("/users/{id}", "/users/42"), pairs(&[("id", "42")]));
        assert_eq!(caps("/users/{id}", "/users/a;v=1"), pairs(&[("id", "a;v=1")]));
        assert_eq!(caps("/users/{id}", "/users/"), None);
        assert_eq!(caps("/users/{id}", "/users"), None);
        assert_eq!(caps("/users/{id}", "/users/1/x"), None);
        assert_eq!(caps("/users/{id}", "/Users/1"), None);
        assert_eq!(caps("/users/{id}", "//users/1"), None);
        assert_eq!(caps("/users/{id}/", "/users/1/"), pairs(&[("id", "1")]));
        assert_eq!(caps("/users/{id}/", "/users/1"), None);
        assert_eq!(caps("/{a}/{b}", "/x/y"), pairs(&[("a", "x"), ("b", "y")]));
    }

    #[test]
    fn catch_all_may_be_empty() {
        assert_eq!(caps("/files/{*rest}", "/files/a/b"), pairs(&[("rest", "a/b")]));
        assert_eq!(caps("/files/{*rest}", "/files/a/"), pairs(&[("rest", "a/")]));
        assert_eq!(caps("/files/{*rest}", "/files/"), pairs(&[("rest", "")]));
        assert_eq!(caps("/files/{*rest}", "/files"), pairs(&[("rest", "")]));
        assert_eq!(caps("/files/{*rest}", "/filesX"), None);
        assert_eq!(caps("/{*all}", "/"), pairs(&[("all", "")]));
        assert_eq!(caps("/{*all}", "//x"), pairs(&[("all", "/x")]));
        assert_eq!(caps("/u/{id}/{*rest}", "/u/1/a/b"), pairs(&[("id", "1"), ("rest", "a/b")]));
    }

    #[test]
    fn malformed_templates() {
        for bad in [
            "/a/{id",
            "/a/id}",
            "/a/{{id}}",
            "/a{b}",
            "/{a}b",
            "/{}",
            "/{*}",
            "/{1a}",
            "/{a-b}",
            "/{*rest}/x",
            "/{id}/{id}",
            "/{id}/{*id}",
            "/a/}{",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rewrite_uses_only_defined_names() {
        let t = Template::parse("/u/{id}/{*rest}").unwrap();
        let params = t.captures("/u/7/a/b").unwrap();
        let fill_with = |r: &str| fill(&parse_rewrite(r, Some(&t)).unwrap(), &params);
        assert_eq!(fill_with("/v2/users/{id}"), "/v2/users/7");
        assert_eq!(fill_with("/v2/{id}/{rest}"), "/v2/7/a/b");
        assert_eq!(fill_with("/v2/{id}/{*rest}"), "/v2/7/a/b");
        assert_eq!(fill_with("/v2/user-{id}.json"), "/v2/user-7.json");
        assert!(parse_rewrite("/v2/{nope}", Some(&t)).is_err());
        assert!(parse_rewrite("/v2/{id}", None).is_err());
        assert!(parse_rewrite("/v2/{id", Some(&t)).is_err());
        assert!(parse_rewrite("/v2/id}", Some(&t)).is_err());
        assert!(parse_rewrite("/v2/{{id}}", Some(&t)).is_err());
    }

    #[test]
    fn specificity() {
        let t = |s| Template::parse(s).unwrap();
        assert_eq!(t("/a/b/{x}").cmp_specificity(&t("/a/{x}/{y}")), Ordering::Less);
        assert_eq!(t("/a/{x}").cmp_specificity(&t("/a/{*x}")), Ordering::Less);
        assert_eq!(t("/a/{x}/{*r}").cmp_specificity(&t("/a/{*r}")), Ordering::Less);
        assert_eq!(t("/a/{x}").cmp_specificity(&t("/{x}/a")), Ordering::Less);
        assert_eq!(t("/a/{x}").cmp_specificity(&t("/a/{y}")), Ordering::Equal);
        assert!(t("/a/{x}").same_shape(&t("/a/{y}")));
        assert!(!t("/a/{x}").same_shape(&t("/b/{y}")));
    }
}
