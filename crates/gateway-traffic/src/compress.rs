//! Response compression (`compress`): whether to compress an answer, and a streaming body
//! that does it.
//!
//! [`should_compress`] picks an [`Encoding`] from the request's `Accept-Encoding` (q-values
//! honoured, `q=0` refuses, `*` stands for any encoding not listed; on a tie `br` beats `zstd`
//! beats `gzip`, the usual order of ratio at the levels used here) and skips answers that
//! should stay as they are:
//!
//! - `HEAD` requests, and `1xx`, `204`, `206` and `304` answers;
//! - answers the backend already encoded (`Content-Encoding` other than `identity`), or marked
//!   `Cache-Control: no-transform`;
//! - `text/event-stream` and `application/grpc*` (they have their own framing and latency
//!   needs), and every type outside a small list of compressible ones: `text/*`,
//!   `application/json`, `application/javascript`, `application/xml`, `*+json`, `*+xml` (which
//!   covers `image/svg+xml`); images, video, audio, fonts and archives are already compressed;
//! - bodies declared smaller than [`MIN_SIZE`] (1 KiB), where the framing costs more than it
//!   saves. A body of unknown length is compressed.
//!
//! [`compress_response`] then sets `content-encoding`, removes `content-length` and
//! `accept-ranges`, adds `vary: accept-encoding` and weakens a strong `ETag` (the compressed
//! bytes are a different representation), and wraps the body in a [`CompressedBody`].
//!
//! The body compresses frame by frame and never holds data back while the source is idle:
//! whenever the source has nothing ready, what was compressed so far is flushed out (a sync
//! flush, which costs a few bytes) before waiting. While the source keeps data coming, output
//! goes out in chunks of about [`OUTPUT_CHUNK`] bytes. Levels suit on-the-fly compression:
//! gzip 6, brotli 4 with a 1 MiB window (brotli's own default, 11, is meant for static files
//! and is about fifty times slower), zstd 3 with a 1 MiB window; each stream holds roughly
//! 0.3 to 2 MiB of compressor state.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use async_compression::tokio::write::{BrotliEncoder, GzipEncoder, ZstdEncoder};
use async_compression::Level;
use bytes::Bytes;
use gateway_core::BoxError;
use http::header::{
    HeaderValue, ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, ETAG,
    VARY,
};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

/// Bodies declared smaller than this are not compressed.
pub const MIN_SIZE: u64 = 1024;
/// The compressed output is handed on in chunks of about this size while input keeps coming.
pub const OUTPUT_CHUNK: usize = 32 * 1024;
/// Input compressed in one poll before yielding to the runtime, so that a fast source cannot
/// monopolise a worker thread.
const INPUT_BUDGET: usize = 256 * 1024;

/// A content coding the gateway produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Gzip,
    Brotli,
    Zstd,
}

impl Encoding {
    /// The token of `Content-Encoding`: `gzip`, `br` or `zstd`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
        }
    }

    /// The best encoding the client accepts, if any; see the module docs.
    pub fn negotiate(accept_encoding: &HeaderMap) -> Option<Encoding> {
        // q-values in thousandths; `None` when not mentioned.
        let (mut br, mut zstd, mut gzip, mut identity, mut star) = (None, None, None, None, None);
        let items = accept_encoding.get_all(ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok());
        for item in items.flat_map(|v| v.split(',')) {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let mut q = Some(1000);
            for param in parts {
                if let Some((name, value)) = param.split_once('=') {
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(value.trim());
                    }
                }
            }
            let Some(q) = q else { continue };
            let slot = match coding.to_ascii_lowercase().as_str() {
                "br" => &mut br,
                "zstd" => &mut zstd,
                "gzip" | "x-gzip" => &mut gzip,
                "identity" => &mut identity,
                "*" => &mut star,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |old: u16| old.max(q)));
        }
        let mut best: Option<(u16, Encoding)> = None;
        // In order of preference: a later one must be strictly better to win.
        for (q, encoding) in [(br, Encoding::Brotli), (zstd, Encoding::Zstd), (gzip, Encoding::Gzip)] {
            let q = q.or(star).unwrap_or(0);
            if q > 0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, encoding));
            }
        }
        let (q, encoding) = best?;
        // An explicit preference for no encoding at all is honoured too.
        match identity {
            Some(iq) if iq > q => None,
            _ => Some(encoding),
        }
    }
}

/// A qvalue (`0`, `0.5`, `1.000`) in thousandths; `None` when malformed.
fn parse_q(s: &str) -> Option<u16> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value =
        frac.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match int {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// Whether to compress this answer, and how; see the module docs for what is skipped.
pub fn should_compress(
    method: &Method,
    request_headers: &HeaderMap,
    status: StatusCode,
    response_headers: &HeaderMap,
) -> Option<Encoding> {
    if method == Method::HEAD
        || status.is_informational()
        || matches!(status, StatusCode::NO_CONTENT | StatusCode::PARTIAL_CONTENT | StatusCode::NOT_MODIFIED)
    {
        return None;
    }
    let encoded = response_headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    let no_transform = response_headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| d.trim().eq_ignore_ascii_case("no-transform"));
    if encoded || no_transform || response_headers.contains_key(http::header::CONTENT_RANGE) {
        return None;
    }
    if !response_headers.get(CONTENT_TYPE).is_some_and(|ct| is_compressible(ct.as_bytes())) {
        return None;
    }
    let length = response_headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n < MIN_SIZE) {
        return None;
    }
    Encoding::negotiate(request_headers)
}

/// `text/*` (but `text/event-stream`), JSON, JavaScript, XML, and `+json` / `+xml` types.
fn is_compressible(content_type: &[u8]) -> bool {
    let essence = content_type.split(|b| *b == b';').next().unwrap_or_default().trim_ascii().to_ascii_lowercase();
    let Some(slash) = essence.iter().position(|b| *b == b'/') else { return false };
    let (kind, subtype) = (&essence[..slash], &essence[slash + 1..]);
    match kind {
        b"text" => subtype != b"event-stream",
        b"application" if subtype.starts_with(b"grpc") => false,
        _ if subtype.ends_with(b"+json") || subtype.ends_with(b"+xml") => true,
        b"application" => matches!(subtype, b"json" | b"javascript" | b"xml"),
        _ => false,
    }
}

/// Compresses an answer with `encoding`: headers as the module docs say, body wrapped.
pub fn compress_response<B>(response: Response<B>, encoding: Encoding) -> Response<CompressedBody<B>> {
    let (mut parts, body) = response.into_parts();
    let headers = &mut parts.headers;
    headers.insert(CONTENT_ENCODING, HeaderValue::from_static(encoding.as_str()));
    headers.remove(CONTENT_LENGTH);
    headers.remove(ACCEPT_RANGES);
    let varies = headers.get_all(VARY).iter().flat_map(|v| v.as_bytes().split(|b| *b == b',')).any(|t| {
        let t = t.trim_ascii();
        t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding")
    });
    if !varies {
        headers.append(VARY, HeaderValue::from_static("accept-encoding"));
    }
    if let Some(etag) = headers.get(ETAG) {
        if etag.as_bytes().starts_with(b"\"") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                headers.insert(ETAG, weak);
            }
        }
    }
    Response::from_parts(parts, CompressedBody::new(body, encoding))
}

/// One of the three write-side encoders, each writing into a `Vec` the body drains.
#[derive(Debug)]
enum Encoder {
    Gzip(GzipEncoder<Vec<u8>>),
    // Boxed: brotli's state is kilobytes, the others' a pointer or two.
    Brotli(Box<BrotliEncoder<Vec<u8>>>),
    Zstd(ZstdEncoder<Vec<u8>>),
}

impl Encoder {
    fn new(encoding: Encoding) -> Encoder {
        match encoding {
            Encoding::Gzip => Encoder::Gzip(GzipEncoder::with_quality(Vec::new(), Level::Precise(6))),
            Encoding::Brotli => {
                let params =
                    async_compression::brotli::EncoderParams::default().quality(Level::Precise(4)).window_size(20);
                Encoder::Brotli(Box::new(BrotliEncoder::with_params(Vec::new(), params)))
            }
            Encoding::Zstd => Encoder::Zstd(ZstdEncoder::with_quality_and_params(
                Vec::new(),
                Level::Precise(3),
                &[async_compression::zstd::CParameter::window_log(20)],
            )),
        }
    }

    fn writer(&mut self) -> Pin<&mut (dyn AsyncWrite + Send)> {
        match self {
            Encoder::Gzip(e) => pin(e),
            Encoder::Brotli(e) => pin(e.as_mut()),
            Encoder::Zstd(e) => pin(e),
        }
    }

    fn output(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// Runs one write-side operation to completion. The sink is a `Vec`, which is always
    /// ready, so nothing here ever waits; a `Pending` would be a bug and is an error, not a hang.
    fn run<T>(
        &mut self,
        op: impl Fn(Pin<&mut (dyn AsyncWrite + Send)>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> io::Result<T> {
        let mut cx = Context::from_waker(Waker::noop());
        match op(self.writer(), &mut cx) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::Error::other("compressor unexpectedly not ready")),
        }
    }

    fn write_all(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.run(|w, cx| w.poll_write(cx, data))?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            data = &data[n..];
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.run(|w, cx| w.poll_flush(cx))
    }

    fn finish(&mut self) -> io::Result<()> {
        self.run(|w, cx| w.poll_shutdown(cx))
    }

    fn take(&mut self) -> Option<Bytes> {
        let out = self.output();
        (!out.is_empty()).then(|| Bytes::from(std::mem::take(out)))
    }

    fn pending_len(&mut self) -> usize {
        self.output().len()
    }
}

fn pin<W: AsyncWrite + Send + Unpin>(w: &mut W) -> Pin<&mut (dyn AsyncWrite + Send)> {
    Pin::<&mut W>::new(w)
}

pin_project_lite::pin_project! {
    /// A body compressed on the fly; see the module docs.
    #[derive(Debug)]
    pub struct CompressedBody<B> {
        #[pin]
        inner: B,
        encoder: Encoder,
        // Input written since the last flush: a stall of the source flushes it.
        unflushed: bool,
        // The source ended (or sent trailers) and the encoder was finished.
        finished: bool,
        // Trailers of the source, sent after the last compressed bytes.
        trailers: Option<HeaderMap>,
        done: bool,
    }
}

impl<B> CompressedBody<B> {
    /// Wraps `inner`; prefer [`compress_response`], which also fixes the headers.
    pub fn new(inner: B, encoding: Encoding) -> Self {
        CompressedBody {
            inner,
            encoder: Encoder::new(encoding),
            unflushed: false,
            finished: false,
            trailers: None,
            done: false,
        }
    }
}

impl<B> Body for CompressedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let mut budget = INPUT_BUDGET;
        loop {
            if *this.finished {
                if let Some(out) = this.encoder.take() {
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
                *this.done = true;
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.encoder.write_all(&data)?;
                        *this.unflushed |= !data.is_empty();
                        if this.encoder.pending_len() >= OUTPUT_CHUNK {
                            return Poll::Ready(this.encoder.take().map(|out| Ok(Frame::data(out))));
                        }
                        budget = budget.saturating_sub(data.len().max(1));
                        if budget == 0 {
                            if let Some(out) = this.encoder.take() {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                    Err(frame) => {
                        // Trailers end the body; other frame kinds have nothing to compress.
                        if let Ok(trailers) = frame.into_trailers() {
                            *this.trailers = Some(trailers);
                            this.encoder.finish()?;
                            *this.finished = true;
                        }
                    }
                },
                Poll::Ready(Some(Err(e))) => {
                    *this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(None) => {
                    this.encoder.finish()?;
                    *this.finished = true;
                }
                Poll::Pending => {
                    // The source is idle: send what is ready, flushing the compressor first if
                    // nothing is, so that a slow stream is never held back.
                    if let Some(out) = this.encoder.take() {
                        return Poll::Ready(Some(Ok(Frame::data(out))));
                    }
                    if std::mem::take(this.unflushed) {
                        this.encoder.flush()?;
                        if let Some(out) = this.encoder.take() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

#[cfg(test)]
mod tests;
