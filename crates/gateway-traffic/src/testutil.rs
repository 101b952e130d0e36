//! Test helpers: a body fed through a channel, so tests control when each chunk arrives.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

/// A body whose chunks come from an unbounded channel; it ends when the sender is dropped.
#[derive(Debug)]
pub(crate) struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
}

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub(crate) fn new() -> (mpsc::UnboundedSender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, ChannelBody { rx })
    }

    /// A body of these chunks, all available at once.
    pub(crate) fn ready(chunks: &[&str]) -> ChannelBody {
        let (tx, body) = Self::new();
        for chunk in chunks {
            let _ = tx.send(Bytes::copy_from_slice(chunk.as_bytes()));
        }
        body
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}
