//! Buffering an upstream body for the cache, without losing it when it turns out too large.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

/// The result of [`buffer_body`].
#[derive(Debug)]
pub enum Buffered<B> {
    /// The whole body, within the limit and without trailers.
    Complete(Bytes),
    /// Over the limit, or with trailers: what was read so far followed by the rest, to pass
    /// through (and not store).
    Partial(PrefixedBody<B>),
}

/// Reads `body` to its end when it holds at most `limit` bytes and no trailers; otherwise
/// stops at the first frame that does not fit and hands back a body that replays what was read
/// and continues with the rest. A body error is returned as it is.
pub async fn buffer_body<B>(mut body: B, limit: usize) -> Result<Buffered<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut chunks: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut len = 0usize;
    loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let Some(frame) = frame.transpose()? else { break };
        match frame.data_ref() {
            Some(data) if len + data.len() <= limit => len += data.len(),
            // Too large, or trailers (or an unknown frame kind): pass through.
            _ => {
                chunks.push_back(frame);
                return Ok(Buffered::Partial(PrefixedBody { prefix: chunks, inner: body }));
            }
        }
        chunks.push_back(frame);
        if body.is_end_stream() {
            break;
        }
    }
    let data = chunks.into_iter().filter_map(|f| f.into_data().ok());
    Ok(Buffered::Complete(concat(data, len)))
}

fn concat(chunks: impl Iterator<Item = Bytes>, len: usize) -> Bytes {
    let mut chunks = chunks.filter(|c| !c.is_empty()).peekable();
    let Some(first) = chunks.next() else { return Bytes::new() };
    if chunks.peek().is_none() {
        return first;
    }
    let mut out = BytesMut::with_capacity(len);
    out.extend_from_slice(&first);
    chunks.for_each(|c| out.extend_from_slice(&c));
    out.freeze()
}

pin_project_lite::pin_project! {
    /// Frames already read, then the rest of the body.
    #[derive(Debug)]
    pub struct PrefixedBody<B> {
        prefix: VecDeque<Frame<Bytes>>,
        #[pin]
        inner: B,
    }
}

impl<B> Body for PrefixedBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        match this.prefix.pop_front() {
            Some(frame) => Poll::Ready(Some(Ok(frame))),
            None => this.inner.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.iter().filter_map(|f| f.data_ref()).map(|d| d.len() as u64).sum();
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + buffered);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ChannelBody;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn small_bodies_are_buffered() {
        let Ok(Buffered::Complete(bytes)) = buffer_body(ChannelBody::ready(&["ab", "", "cd"]), 4).await else {
            panic!("expected a complete body")
        };
        assert_eq!(bytes, "abcd");
        let Ok(Buffered::Complete(bytes)) = buffer_body(Full::new(Bytes::from_static(b"x")), 1).await else {
            panic!("expected a complete body")
        };
        assert_eq!(bytes, "x");
    }

    #[tokio::test]
    async fn large_bodies_are_replayed_whole() {
        let Ok(Buffered::Partial(body)) = buffer_body(ChannelBody::ready(&["ab", "cd", "ef"]), 3).await else {
            panic!("expected a partial body")
        };
        assert_eq!(body.size_hint().lower(), 4);
        assert_eq!(body.collect().await.expect("ok").to_bytes(), "abcdef");
    }
}
