//! [`Aggregate::run`]: start every part whose dependencies answered, wait for them within
//! the deadline, merge the answers.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gateway_core::{ErrorKind, GatewayError, Principal};
use http::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::compile::{Aggregate, Part};
use crate::error::PartError;
use crate::merge::{deep_merge, deep_merge_map};
use crate::template::Values;
use crate::{PartFailure, PartFetcher, PartRequest, PartResponse};

/// What one aggregate request is filled from, and its limits.
#[derive(Debug, Clone)]
pub struct AggregateContext<'a> {
    /// The route's path parameters as the router captured them (still percent-encoded);
    /// `{name}` in a part's path reads them.
    pub params: &'a [(&'a str, &'a str)],
    /// The client's raw query string (without `?`); `{query.NAME}` reads it.
    pub query: Option<&'a str>,
    /// The authenticated caller; `{claim.NAME}` reads its claims.
    pub principal: Option<&'a Principal>,
    /// Headers every part gets: request id, `traceparent`, forwarded identity headers.
    pub headers: HeaderMap,
    /// How long the whole aggregate may take, from the call to `run`; nothing waits after it.
    pub deadline: Duration,
    /// How long one part may take (the route's timeout, or the part's own when the schema has one).
    pub part_timeout: Duration,
    /// Largest answer body read from one part.
    pub max_body: u64,
}

/// The merged answer.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateAnswer {
    /// The merged JSON document (an object), to send as `application/json` with status 200.
    pub body: Bytes,
    /// Optional parts that failed and were left out, in configuration order.
    pub partial: Vec<String>,
}

impl AggregateAnswer {
    /// The `x-gateway-partial` value (`orders,prices`), or `None` when every part answered.
    pub fn partial_header(&self) -> Option<HeaderValue> {
        if self.partial.is_empty() {
            return None;
        }
        HeaderValue::from_bytes(self.partial.join(",").as_bytes()).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for its dependencies.
    Waiting,
    Running,
    Done,
    /// Failed and optional: left out.
    Failed,
}

type PartFuture<'f> = Pin<Box<dyn Future<Output = (usize, Result<Value, PartError>)> + Send + 'f>>;

impl Aggregate {
    /// Runs every part (independent ones at once, dependent ones as soon as what they
    /// depend on answered), merges the answers and returns the document.
    ///
    /// A required part that fails ends the aggregate at once (parts still running are
    /// dropped): 504 `gateway_timeout` if it ran out of time, 400 `bad_request` if the
    /// client's query lacks a parameter its path needs or a value from the client cannot be
    /// used, 403 `forbidden` if the caller lacks a claim it needs, else 502 `bad_gateway`;
    /// the message names the part. An optional
    /// part that fails is left out and named in [`AggregateAnswer::partial`]. A part whose
    /// dependency failed fails too. When `ctx.deadline` passes, parts still running or
    /// waiting fail as timed out.
    pub async fn run(
        &self,
        ctx: AggregateContext<'_>,
        fetcher: &dyn PartFetcher,
    ) -> Result<AggregateAnswer, GatewayError> {
        let deadline = Instant::now() + ctx.deadline;
        let count = self.parts.len();
        let mut states = vec![State::Waiting; count];
        let mut answers: Vec<Option<Value>> = vec![None; count];
        let mut running: FuturesUnordered<PartFuture<'_>> = FuturesUnordered::new();
        loop {
            // Start what can start; fail what cannot ever start. Repeat until nothing
            // changes, so a failure reaches dependents of dependents.
            let mut changed = true;
            while changed {
                changed = false;
                for i in 0..count {
                    if states[i] != State::Waiting {
                        continue;
                    }
                    let part = &self.parts[i];
                    if let Some(&dep) = part.deps.iter().find(|&&d| states[d] == State::Failed) {
                        let error = PartError::Dependency(self.names[dep].clone());
                        self.fail(&mut states, i, error)?;
                        changed = true;
                        continue;
                    }
                    if !part.deps.iter().all(|&d| states[d] == State::Done) {
                        continue;
                    }
                    let values =
                        Values { params: ctx.params, query: ctx.query, principal: ctx.principal, answers: &answers };
                    match self.request(part, &values, &ctx, deadline) {
                        Ok(request) => {
                            running.push(Box::pin(fetch(i, part, request, fetcher)));
                            states[i] = State::Running;
                        }
                        Err(error) => self.fail(&mut states, i, error)?,
                    }
                    changed = true;
                }
            }
            if running.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, running.next()).await {
                Ok(Some((i, Ok(answer)))) => {
                    answers[i] = Some(answer);
                    states[i] = State::Done;
                }
                Ok(Some((i, Err(error)))) => self.fail(&mut states, i, error)?,
                Ok(None) => break,
                Err(_) => {
                    drop(running);
                    for i in 0..count {
                        if matches!(states[i], State::Waiting | State::Running) {
                            self.fail(&mut states, i, PartError::Deadline)?;
                        }
                    }
                    break;
                }
            }
        }
        self.merge(answers, &states)
    }

    /// Records a failure: `Err` (ending the aggregate) for a required part.
    fn fail(&self, states: &mut [State], i: usize, error: PartError) -> Result<(), GatewayError> {
        let part = &self.parts[i];
        tracing::debug!(route = %self.route, part = %part.name, optional = part.optional, %error, "aggregate part failed");
        if !part.optional {
            return Err(error.into_gateway_error(&part.name));
        }
        states[i] = State::Failed;
        Ok(())
    }

    /// Fills a part's request.
    fn request(
        &self,
        part: &Part,
        values: &Values<'_>,
        ctx: &AggregateContext<'_>,
        deadline: Instant,
    ) -> Result<PartRequest, PartError> {
        let path_and_query = part.path.render_path(values, &self.names)?;
        let mut headers = ctx.headers.clone();
        for (name, template) in &part.headers {
            headers.insert(name.clone(), template.render_header(values, &self.names)?);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        Ok(PartRequest {
            part: part.name.clone(),
            service: part.service.clone(),
            method: part.method.clone(),
            path_and_query,
            headers,
            timeout: part.timeout.unwrap_or(ctx.part_timeout).min(left),
            max_body: ctx.max_body,
        })
    }

    /// Shapes and merges the answers in configuration order.
    fn merge(&self, answers: Vec<Option<Value>>, states: &[State]) -> Result<AggregateAnswer, GatewayError> {
        let mut root = Map::new();
        for (part, answer) in self.parts.iter().zip(answers) {
            let Some(answer) = answer else { continue };
            match (part.shape.apply(answer), &part.into) {
                (value, Some(key)) => match root.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        root.insert(key.clone(), value);
                    }
                },
                (Value::Object(map), None) => deep_merge_map(&mut root, map),
                // Checked when the answer arrived.
                (_, None) => {}
            }
        }
        let body = serde_json::to_vec(&Value::Object(root))
            .map_err(|e| GatewayError::new(ErrorKind::BadGateway, format!("aggregate answer: {e}")))?;
        let partial = states
            .iter()
            .zip(&self.names)
            .filter(|(state, _)| **state == State::Failed)
            .map(|(_, name)| name.clone())
            .collect();
        Ok(AggregateAnswer { body: Bytes::from(body), partial })
    }
}

/// Fetches one part and checks its answer: 2xx, within the size limit, JSON, and an object
/// when it is merged at the top.
async fn fetch(
    i: usize,
    part: &Part,
    request: PartRequest,
    fetcher: &dyn PartFetcher,
) -> (usize, Result<Value, PartError>) {
    let max_body = request.max_body;
    let result = match tokio::time::timeout(request.timeout, fetcher.fetch(request)).await {
        Err(_) => Err(PartError::Fetch(PartFailure::Timeout)),
        Ok(Err(failure)) => Err(PartError::Fetch(failure)),
        Ok(Ok(response)) => check(part, response, max_body),
    };
    (i, result)
}

fn check(part: &Part, response: PartResponse, max_body: u64) -> Result<Value, PartError> {
    if !response.status.is_success() {
        return Err(PartError::Status(response.status.as_u16()));
    }
    if u64::try_from(response.body.len()).unwrap_or(u64::MAX) > max_body {
        return Err(PartError::Fetch(PartFailure::TooLarge));
    }
    let value: Value = serde_json::from_slice(&response.body).map_err(|e| PartError::NotJson(e.to_string()))?;
    if part.into.is_none() && !value.is_object() {
        return Err(PartError::NotObject);
    }
    Ok(value)
}
