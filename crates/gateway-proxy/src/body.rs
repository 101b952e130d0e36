use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Why the gateway stopped reading a client's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyLimitError {
    #[error("request body is larger than the {0} bytes allowed")]
    TooLarge(u64),
    #[error("request body stalled: nothing arrived for {0:?}")]
    Stalled(Duration),
    #[error("client aborted the request body")]
    Aborted,
}

pin_project_lite::pin_project! {
    /// The client's request body on its way upstream: streamed frame by frame, with a
    /// byte limit and an idle timeout between frames. (The deadline is boxed because
    /// the pooled client wants an `Unpin` body; an empty body costs no allocation.)
    #[project = RequestBodyProj]
    pub enum RequestBody {
        Empty,
        /// Bytes the gateway holds (a queued message delivered over HTTP).
        Bytes { data: Option<Bytes> },
        Streaming {
            #[pin] inner: Incoming,
            remaining: u64,
            limit: u64,
            idle: Duration,
            deadline: Pin<Box<Sleep>>,
        },
        /// A body wrapped on the way (a request whose copy goes to a mirror): off the common path.
        Boxed { inner: Pin<Box<dyn http_body::Body<Data = Bytes, Error = BodyLimitError> + Send>> },
    }
}

impl RequestBody {
    /// Wrap a client body. An empty body (a GET) costs nothing.
    pub fn new(inner: Incoming, limit: u64, idle: Duration) -> Self {
        if inner.is_end_stream() {
            return RequestBody::Empty;
        }
        RequestBody::Streaming { inner, remaining: limit, limit, idle, deadline: Box::pin(tokio::time::sleep(idle)) }
    }

    /// A body made of another (such as this one, teed).
    pub fn boxed(body: impl http_body::Body<Data = Bytes, Error = BodyLimitError> + Send + 'static) -> Self {
        RequestBody::Boxed { inner: Box::pin(body) }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyLimitError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            RequestBodyProj::Empty => Poll::Ready(None),
            RequestBodyProj::Bytes { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBodyProj::Boxed { inner } => inner.as_mut().poll_frame(cx),
            RequestBodyProj::Streaming { inner, remaining, limit, idle, deadline } => {
                let frame = match inner.poll_frame(cx) {
                    Poll::Ready(frame) => frame,
                    Poll::Pending => {
                        ready!(deadline.as_mut().poll(cx));
                        return Poll::Ready(Some(Err(BodyLimitError::Stalled(*idle))));
                    }
                };
                match frame {
                    None => Poll::Ready(None),
                    Some(Err(_)) => Poll::Ready(Some(Err(BodyLimitError::Aborted))),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let len = data.len() as u64;
                            if len > *remaining {
                                *remaining = 0;
                                return Poll::Ready(Some(Err(BodyLimitError::TooLarge(*limit))));
                            }
                            *remaining -= len;
                        }
                        deadline.as_mut().reset(Instant::now() + *idle);
                        Poll::Ready(Some(Ok(frame)))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Bytes { data } => data.is_none(),
            RequestBody::Streaming { inner, .. } => inner.is_end_stream(),
            RequestBody::Boxed { inner } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Bytes { data } => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            RequestBody::Streaming { inner, .. } => inner.size_hint(),
            RequestBody::Boxed { inner } => inner.size_hint(),
        }
    }
}

use std::future::Future as _;
