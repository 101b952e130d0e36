//! [`Aggregate::compile`]: a route's `aggregate` list checked and turned into what
//! [`Aggregate::run`](crate::Aggregate::run) needs per request.

use std::sync::Arc;

use gateway_config::{AggregatePart, Route};
use http::{HeaderName, Method};

use crate::merge::Shape;
use crate::template::{Scope, Template};

/// A route's aggregation, compiled once per configuration.
#[derive(Debug)]
pub struct Aggregate {
    /// The route's name, for logs.
    pub(crate) route: Arc<str>,
    /// In configuration order, which is also the merge order.
    pub(crate) parts: Vec<Part>,
    /// Part names by index, for templates and messages.
    pub(crate) names: Vec<String>,
}

/// One compiled part.
#[derive(Debug)]
pub(crate) struct Part {
    pub name: Arc<str>,
    pub service: Arc<str>,
    pub method: Method,
    pub path: Template,
    /// The part's configured headers, values possibly templated.
    pub headers: Vec<(HeaderName, Template)>,
    /// The key the answer goes under; `None`: deep-merged at the top.
    pub into: Option<String>,
    pub optional: bool,
    /// The part's own timeout; `None`: the context's `part_timeout`.
    pub timeout: Option<std::time::Duration>,
    /// Parts that must answer first: `after`, and every part a template reads from.
    pub deps: Vec<usize>,
    pub shape: Shape,
}

/// A part's name: `name`, else `into`, else `part{index}` (counting from 0).
pub fn part_name(part: &AggregatePart, index: usize) -> String {
    part.name.clone().or_else(|| part.into.clone()).unwrap_or_else(|| format!("part{index}"))
}

impl Aggregate {
    /// Compiles `route.aggregate`: `Ok(None)` when the route does not aggregate.
    ///
    /// Checks what `gateway-config` does not: unique part names, templates that refer to
    /// parameters of the route's `path`, to claims only on routes with `auth`, and to
    /// existing parts; `after` and template references without cycles; `select` and
    /// `rename` without empty or clashing names; header names and values.
    pub fn compile(route: &Route) -> Result<Option<Aggregate>, String> {
        let Some(parts) = &route.aggregate else {
            return Ok(None);
        };
        let route_name = route.name.get_ref().as_str();
        let fail = |e: String| format!("route `{route_name}`: {e}");
        if parts.is_empty() {
            return Err(fail("aggregate needs at least one part".to_owned()));
        }
        let names: Vec<String> = parts.iter().enumerate().map(|(i, p)| part_name(p, i)).collect();
        for (i, name) in names.iter().enumerate() {
            check_name(name).map_err(|e| fail(format!("aggregate part `{name}`: {e}")))?;
            if names[..i].contains(name) {
                return Err(fail(format!(
                    "two aggregate parts are named `{name}`; give one of them a different `name`"
                )));
            }
        }
        let (params, catch_all) = route_params(route.path.as_ref().map(|p| p.get_ref().as_str()));
        let scope =
            Scope { params: &params, catch_all: catch_all.as_deref(), parts: &names, has_auth: !route.auth.is_empty() };
        let compiled = parts
            .iter()
            .enumerate()
            .map(|(i, part)| {
                compile_part(part, i, &names, &scope).map_err(|e| fail(format!("aggregate part `{}`: {e}", names[i])))
            })
            .collect::<Result<Vec<Part>, String>>()?;
        if let Some(cycle) = find_cycle(&compiled) {
            let path: Vec<&str> = cycle.iter().map(|&i| names[i].as_str()).collect();
            return Err(fail(format!("aggregate parts depend on each other in a cycle: {}", path.join(" -> "))));
        }
        Ok(Some(Aggregate { route: Arc::from(route_name), parts: compiled, names }))
    }

    /// The services the parts call, in part order (with repeats).
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().map(|p| &*p.service)
    }

    /// The part names, in configuration order.
    pub fn part_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }
}

/// Names go into `x-gateway-partial` (comma-separated) and templates (`{name.field}`).
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name == "query" || name == "claim" {
        return Err(format!("`{name}` is reserved for `{{{name}.NAME}}`; set another `name`"));
    }
    if name.contains([',', '.', '{', '}']) || name.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(
            "a part name cannot contain `,`, `.`, `{`, `}` or control characters; set a simple `name`".to_owned()
        );
    }
    Ok(())
}

/// The parameter names of a route's `path` template and its catch-all.
fn route_params(path: Option<&str>) -> (Vec<String>, Option<String>) {
    let mut params = Vec::new();
    let mut catch_all = None;
    for segment in path.unwrap_or("").split('/') {
        let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else { continue };
        match inner.strip_prefix('*') {
            Some(name) => {
                params.push(name.to_owned());
                catch_all = Some(name.to_owned());
            }
            None => params.push(inner.to_owned()),
        }
    }
    (params, catch_all)
}

fn compile_part(part: &AggregatePart, index: usize, names: &[String], scope: &Scope<'_>) -> Result<Part, String> {
    let method = match part.method.as_deref() {
        None => Method::GET,
        Some(m) if m.bytes().any(|b| b.is_ascii_lowercase()) => {
            return Err(format!("method `{m}` must be uppercase"));
        }
        Some(m) => Method::from_bytes(m.as_bytes()).map_err(|_| format!("`{m}` is not an HTTP method"))?,
    };
    let path = Template::path(&part.path, scope)?;
    let mut headers = Vec::with_capacity(part.headers.len());
    for (name, value) in &part.headers {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("`{name}` is not a header name"))?;
        let template = Template::header(value, scope).map_err(|e| format!("header `{name}`: {e}"))?;
        headers.push((header, template));
    }
    let mut deps: Vec<usize> = path.parts().chain(headers.iter().flat_map(|(_, t)| t.parts())).collect();
    if let Some(after) = &part.after {
        let dep = names
            .iter()
            .position(|n| n == after)
            .ok_or_else(|| format!("`after` names no part `{after}` (names: {})", names.join(", ")))?;
        deps.push(dep);
    }
    deps.sort_unstable();
    deps.dedup();
    if deps.contains(&index) {
        return Err("a part cannot depend on itself".to_owned());
    }
    if let Some(into) = &part.into {
        if into.is_empty() {
            return Err("`into` is empty".to_owned());
        }
    }
    if part.select.iter().any(String::is_empty) {
        return Err("`select` has an empty field name".to_owned());
    }
    let rename: Vec<(String, String)> = part.rename.iter().map(|(o, n)| (o.clone(), n.clone())).collect();
    for (i, (old, new)) in rename.iter().enumerate() {
        if old.is_empty() || new.is_empty() {
            return Err("`rename` has an empty field name".to_owned());
        }
        if rename[..i].iter().any(|(_, other)| other == new) {
            return Err(format!("`rename` gives two fields the name `{new}`"));
        }
        if !part.select.is_empty() && !part.select.contains(old) {
            return Err(format!("`rename` renames `{old}`, which `select` drops (select applies first)"));
        }
    }
    Ok(Part {
        name: Arc::from(names[index].as_str()),
        service: Arc::from(part.service.get_ref().as_str()),
        method,
        path,
        headers,
        into: part.into.clone(),
        optional: part.optional,
        timeout: part.timeout.map(|t| t.get()),
        deps,
        shape: Shape { select: part.select.clone(), rename },
    })
}

/// A dependency cycle, as part indices from a part back to itself.
fn find_cycle(parts: &[Part]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(i: usize, parts: &[Part], marks: &mut [Mark], stack: &mut Vec<usize>) -> Option<Vec<usize>> {
        marks[i] = Mark::Open;
        stack.push(i);
        for &d in &parts[i].deps {
            match marks[d] {
                Mark::Open => {
                    let start = stack.iter().position(|&s| s == d).unwrap_or(0);
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(d);
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(cycle) = visit(d, parts, marks, stack) {
                        return Some(cycle);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
        None
    }
    let mut marks = vec![Mark::New; parts.len()];
    let mut stack = Vec::new();
    (0..parts.len()).find_map(|i| if marks[i] == Mark::New { visit(i, parts, &mut marks, &mut stack) } else { None })
}
