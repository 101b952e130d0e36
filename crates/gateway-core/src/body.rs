use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

/// Boxed error type carried by bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A response body: the upstream's stream passed through untouched, bytes the
    /// gateway wrote itself, or (off the hot path) any other body boxed.
    #[project = BodyProj]
    pub enum Body {
        Upstream { #[pin] inner: Incoming },
        /// An upstream stream that holds something until it ends or is dropped (the
        /// load balancer's in-flight guard).
        Guarded { #[pin] inner: Incoming, guard: Box<dyn std::any::Any + Send> },
        Full { #[pin] inner: Full<Bytes> },
        Boxed { #[pin] inner: UnsyncBoxBody<Bytes, BoxError> },
    }
}

impl Body {
    pub fn empty() -> Self {
        Body::Full { inner: Full::new(Bytes::new()) }
    }

    /// Keep `guard` alive as long as this body: an upstream body gets it attached, any
    /// other body drops it at once.
    pub fn guarded(self, guard: Box<dyn std::any::Any + Send>) -> Self {
        match self {
            Body::Upstream { inner } => Body::Guarded { inner, guard },
            other => other,
        }
    }

    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body::Boxed { inner: body.map_err(Into::into).boxed_unsync() }
    }
}

/// A body of bytes the gateway made.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::Full { inner: Full::new(bytes.into()) }
}

impl From<Incoming> for Body {
    fn from(inner: Incoming) -> Self {
        Body::Upstream { inner }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            BodyProj::Upstream { inner } | BodyProj::Guarded { inner, .. } => inner.poll_frame(cx).map_err(Into::into),
            BodyProj::Full { inner } => inner.poll_frame(cx).map_err(|never| match never {}),
            BodyProj::Boxed { inner } => inner.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Upstream { inner } | Body::Guarded { inner, .. } => inner.is_end_stream(),
            Body::Full { inner } => inner.is_end_stream(),
            Body::Boxed { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Upstream { inner } | Body::Guarded { inner, .. } => inner.size_hint(),
            Body::Full { inner } => inner.size_hint(),
            Body::Boxed { inner } => inner.size_hint(),
        }
    }
}
