//! Why a part failed, and what a failed required part answers the client.

use gateway_core::{ErrorKind, GatewayError};

/// How a [`PartFetcher`](crate::PartFetcher) reports a part it could not fetch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartFailure {
    /// The service did not answer within [`PartRequest::timeout`](crate::PartRequest::timeout).
    #[error("timed out")]
    Timeout,
    /// No endpoint to send it to: no healthy endpoint, circuit open, unknown service.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The answer's body was over [`PartRequest::max_body`](crate::PartRequest::max_body).
    #[error("answer body over the size limit")]
    TooLarge,
    /// Refused, reset, invalid answer: anything else the upstream did wrong.
    #[error("{0}")]
    Upstream(String),
}

impl PartFailure {
    pub fn is_timeout(&self) -> bool {
        matches!(self, PartFailure::Timeout)
    }
}

/// Why one part has no answer to merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PartError {
    #[error("{0}")]
    Fetch(#[from] PartFailure),
    /// The aggregate's deadline passed before the part finished.
    #[error("not finished before the aggregate's deadline")]
    Deadline,
    #[error("answered {0}")]
    Status(u16),
    #[error("answer is not JSON: {0}")]
    NotJson(String),
    /// A part without `into` must answer an object to be merged at the top.
    #[error("answer is not a JSON object (give the part an `into` key to keep it)")]
    NotObject,
    /// The caller's query lacks a parameter the part's template uses.
    #[error("the request has no query parameter `{0}`")]
    MissingQuery(String),
    /// The caller's credentials lack a claim the part's template uses.
    #[error("the caller has no claim `{0}`")]
    MissingClaim(String),
    /// An earlier part's answer lacks a field (or it is an object, an array or null).
    #[error("part `{part}` answered no usable field `{field}`")]
    MissingField { part: String, field: String },
    /// A value from an earlier part's answer that cannot go where the template puts it.
    #[error("{0}")]
    BadValue(String),
    /// A value from the client's request (path, query, claims) that cannot go where the
    /// template puts it (`..` as a path segment, control characters in a header).
    #[error("{0}")]
    BadInput(String),
    /// A part this one depends on failed.
    #[error("part `{0}` it depends on failed")]
    Dependency(String),
}

impl PartError {
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, PartError::Deadline | PartError::Fetch(PartFailure::Timeout))
    }

    /// What the client gets when a required part fails this way: 504 for time, 400 or 403
    /// when the caller's request lacks what the template needs (or holds a value it cannot
    /// use), 502 for everything else.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            e if e.is_timeout() => ErrorKind::GatewayTimeout,
            PartError::MissingQuery(_) | PartError::BadInput(_) => ErrorKind::BadRequest,
            PartError::MissingClaim(_) => ErrorKind::Forbidden,
            _ => ErrorKind::BadGateway,
        }
    }

    pub(crate) fn into_gateway_error(self, part: &str) -> GatewayError {
        let kind = self.kind();
        GatewayError::new(kind, format!("aggregate part `{part}` failed: {self}"))
    }
}
