//! Request mirroring (`mirror`): which requests are copied to the shadow service, and a
//! bounded copy of their body.
//!
//! The caller (the proxy) decides per request with [`Mirror::should_mirror`], takes a
//! [`MirrorPermit`] with [`Mirror::try_acquire`] (so a slow shadow holds at most
//! `max_in_flight` copies in memory, and further requests are simply not mirrored), and looks
//! at the request body with [`Mirror::body_plan`]:
//!
//! - [`BodyPlan::Empty`]: no body; mirror at once with an empty one.
//! - [`BodyPlan::Copy`]: the body declares a length of at most [`Mirror::body_limit`] bytes;
//!   wrap it with [`tee`], send the [`MirrorBody`] to the primary as usual, and send the
//!   mirror once [`BodyCopy`] resolves to `Some(bytes)`.
//! - [`BodyPlan::Skip`]: the body is larger than the limit, or of unknown length (chunked,
//!   HTTP/2 without `content-length`): the request is **not mirrored**. Unknown lengths are
//!   skipped rather than copied up to the limit so that the decision is made before a byte is
//!   read, and a request is never half-mirrored.
//!
//! The copy never slows the primary: [`MirrorBody`] passes every frame on as it arrives and
//! keeps a copy on the side; at the end of the body the copy is handed over through a
//! one-shot channel that never blocks. If the primary stops reading the body (an upstream
//! error, a client abort), the body errors, or it turns out longer than the limit, the copy is
//! dropped and [`BodyCopy`] resolves to `None`. Trailers are not copied.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// The default largest request body that is mirrored: 64 KiB.
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;
/// The default number of mirror requests of one route in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// A compiled `mirror`: the shadow service, the sampling threshold and the in-flight bound.
#[derive(Debug, Clone)]
pub struct Mirror {
    service: String,
    percent: f64,
    /// `random < threshold` mirrors: `percent / 100` of the `u64` range.
    threshold: u64,
    /// 100%: mirror every request, whatever the random number.
    always: bool,
    body_limit: usize,
    /// Permits for mirror requests in flight; shared by clones (one per route).
    in_flight: Arc<Semaphore>,
}

impl Mirror {
    /// Compiles a route's `mirror`, with [`DEFAULT_BODY_LIMIT`] and [`DEFAULT_MAX_IN_FLIGHT`].
    /// Errors when `percent` is not within 0 to 100 (config validation reports it first).
    pub fn compile(config: &gateway_config::schema::Mirror) -> Result<Mirror, String> {
        let percent = config.percent;
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("mirror.percent must be between 0 and 100, not {percent}"));
        }
        // `as` saturates: 100% would be 2^64, one past `u64::MAX`, hence `always`.
        let threshold = (percent / 100.0 * 18_446_744_073_709_551_616.0) as u64;
        Ok(Mirror {
            service: config.service.get_ref().clone(),
            percent,
            threshold,
            always: percent >= 100.0,
            body_limit: DEFAULT_BODY_LIMIT,
            in_flight: Arc::new(Semaphore::new(DEFAULT_MAX_IN_FLIGHT)),
        })
    }

    /// Another body limit (bytes).
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Another bound on mirror requests in flight (at least 1).
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.in_flight = Arc::new(Semaphore::new(max.max(1)));
        self
    }

    /// The shadow service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The configured percentage.
    pub fn percent(&self) -> f64 {
        self.percent
    }

    /// The largest request body that is mirrored.
    pub fn body_limit(&self) -> usize {
        self.body_limit
    }

    /// Whether this request is sampled; `random` is a uniformly random `u64` (such as
    /// [`crate::random_u64`]).
    pub fn should_mirror(&self, random: u64) -> bool {
        self.always || random < self.threshold
    }

    /// A permit for one mirror request, held until its answer (or failure) arrives; `None`
    /// when `max_in_flight` are already out, in which case the request is not mirrored
    /// (count it as skipped).
    pub fn try_acquire(&self) -> Option<MirrorPermit> {
        self.in_flight.clone().try_acquire_owned().ok().map(|p| MirrorPermit { _permit: p })
    }

    /// What to do with the request body, from its size hint (exact when `content-length` is
    /// known).
    pub fn body_plan(&self, hint: &SizeHint) -> BodyPlan {
        match hint.exact() {
            Some(0) => BodyPlan::Empty,
            Some(n) if n <= self.body_limit as u64 => BodyPlan::Copy,
            _ => BodyPlan::Skip,
        }
    }
}

/// One mirror request in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct MirrorPermit {
    _permit: OwnedSemaphorePermit,
}

/// What [`Mirror::body_plan`] decided for a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyPlan {
    /// No body: mirror with an empty one.
    Empty,
    /// A body of known length within the limit: [`tee`] it.
    Copy,
    /// Too large or of unknown length: do not mirror this request.
    Skip,
}

/// Wraps a request body so that a copy of up to `limit` bytes is kept on the side; see the
/// module docs. The returned [`BodyCopy`] resolves once the body has been read to its end.
pub fn tee<B>(body: B, limit: usize) -> (MirrorBody<B>, BodyCopy) {
    let (tx, rx) = oneshot::channel();
    (MirrorBody { inner: body, copy: Some(Copy { buf: BytesMut::new(), limit, tx }) }, BodyCopy(rx))
}

#[derive(Debug)]
struct Copy {
    buf: BytesMut,
    limit: usize,
    tx: oneshot::Sender<Bytes>,
}

pin_project_lite::pin_project! {
    /// A request body that passes its frames through and keeps a bounded copy; see [`tee`].
    #[derive(Debug)]
    pub struct MirrorBody<B> {
        #[pin]
        inner: B,
        // `None` once the copy was handed over or abandoned.
        copy: Option<Copy>,
    }
}

impl<B> Body for MirrorBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let over = this.copy.as_ref().is_some_and(|c| c.buf.len() + data.len() > c.limit);
                    if over {
                        *this.copy = None;
                    } else if let Some(copy) = this.copy.as_mut() {
                        copy.buf.extend_from_slice(data);
                    }
                }
            }
            // An error abandons the copy; the end of the body hands it over.
            Some(Err(_)) => *this.copy = None,
            None => finish(this.copy),
        }
        // The reader may stop polling once `is_end_stream` holds, before it sees `None`.
        if this.inner.is_end_stream() {
            finish(this.copy);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(copy: &mut Option<Copy>) {
    if let Some(copy) = copy.take() {
        // The mirror task may be gone already; then nobody wants the copy.
        let _ = copy.tx.send(copy.buf.freeze());
    }
}

/// The copy of a [`MirrorBody`]: resolves to the whole body once it was read to its end, or
/// `None` when the copy was abandoned (see the module docs).
#[derive(Debug)]
pub struct BodyCopy(oneshot::Receiver<Bytes>);

impl Future for BodyCopy {
    type Output = Option<Bytes>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        Pin::new(&mut self.0).poll(cx).map(Result::ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ChannelBody;
    use gateway_config::schema;
    use http_body_util::{BodyExt, Full};
    use serde_spanned::Spanned;

    fn mirror(percent: f64) -> Mirror {
        Mirror::compile(&schema::Mirror { service: Spanned::new(0..0, "shadow".into()), percent }).expect("valid")
    }

    #[test]
    fn percent_is_honoured() {
        let m = mirror(5.0);
        assert_eq!(m.service(), "shadow");
        let hits = (0..10_000).filter(|_| m.should_mirror(crate::random_u64())).count();
        assert!((400..=600).contains(&hits), "{hits} of 10000 at 5%");
        assert!((0..1000).all(|_| mirror(100.0).should_mirror(crate::random_u64())));
        assert!(mirror(100.0).should_mirror(u64::MAX));
        assert!(!(0..1000).any(|_| mirror(0.0).should_mirror(crate::random_u64())));
        assert!(!mirror(0.0).should_mirror(0));
        assert!(Mirror::compile(&schema::Mirror { service: Spanned::new(0..0, "s".into()), percent: 101.0 }).is_err());
    }

    #[test]
    fn in_flight_is_bounded() {
        let m = mirror(100.0).with_max_in_flight(2);
        let a = m.try_acquire().expect("first");
        let _b = m.clone().try_acquire().expect("second, through a clone");
        assert!(m.try_acquire().is_none());
        drop(a);
        assert!(m.try_acquire().is_some());
    }

    #[test]
    fn body_plan_by_length() {
        let m = mirror(100.0).with_body_limit(10);
        assert_eq!(m.body_plan(&SizeHint::with_exact(0)), BodyPlan::Empty);
        assert_eq!(m.body_plan(&SizeHint::with_exact(10)), BodyPlan::Copy);
        assert_eq!(m.body_plan(&SizeHint::with_exact(11)), BodyPlan::Skip);
        assert_eq!(m.body_plan(&SizeHint::new()), BodyPlan::Skip, "unknown length");
        assert_eq!(m.body_limit(), 10);
    }

    #[tokio::test]
    async fn tee_passes_through_and_copies() {
        let (body, copy) = tee(Full::new(Bytes::from_static(b"hello mirror")), 64);
        let primary = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(primary, "hello mirror");
        assert_eq!(copy.await.as_deref(), Some(&b"hello mirror"[..]));
    }

    #[tokio::test]
    async fn tee_of_many_chunks() {
        let (body, copy) = tee(ChannelBody::ready(&["a", "bc", "def"]), 64);
        assert_eq!(body.collect().await.expect("ok").to_bytes(), "abcdef");
        assert_eq!(copy.await.as_deref(), Some(&b"abcdef"[..]));
    }

    #[tokio::test]
    async fn copy_abandoned_over_limit_or_on_drop() {
        let (body, copy) = tee(Full::new(Bytes::from_static(b"0123456789")), 4);
        assert_eq!(body.collect().await.expect("infallible").to_bytes(), "0123456789", "primary unaffected");
        assert_eq!(copy.await, None);

        let (mut body, copy) = tee(ChannelBody::ready(&["a", "b"]), 64);
        let first = body.frame().await.expect("a frame").expect("ok");
        assert_eq!(first.into_data().ok().as_deref(), Some(&b"a"[..]));
        drop(body);
        assert_eq!(copy.await, None, "a body not read to its end is not mirrored");
    }
}
