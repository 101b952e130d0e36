//! Strict parsing of HTTP/1.1 request heads, on the raw bytes.
//!
//! hyper's HTTP/1 server normalises some framing ambiguities away before the service
//! sees the request: with both `content-length` and `transfer-encoding: chunked` it
//! drops `content-length` and carries on, `#fragment` is stripped from the request
//! target, httparse takes a bare LF as a line ending, and `transfer-encoding` lists
//! such as `gzip, chunked` are accepted. The SPEC ("Strict parsing") wants 400 and a
//! closed connection for all of these, with nothing going upstream, and by the time a
//! `Request` exists the evidence is gone. So [`StrictIo`] sits between the socket and
//! hyper and runs a [`HeadScanner`] over the bytes as hyper reads them: for every
//! request head it pushes one [`HeadVerdict`] onto the connection's [`Verdicts`], in
//! arrival order, and the service pops one per request.
//!
//! hyper cannot parse a head before it has read all of it, so the verdict for a
//! request is always queued before the service is called for it. To find the next
//! pipelined head at the right byte the scanner skips bodies with the same framing
//! rules as hyper's decoder. When it cannot follow the stream any more (a head with a
//! problem, an upgrade or CONNECT, a body it cannot frame, a head too large) it stops
//! scanning for the rest of the connection: such connections are closed, refused by
//! hyper, or turned into tunnels whose bytes are not HTTP.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use gateway_core::{ErrorKind, GatewayError, RequestId};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::keepalive::ConnClock;

/// Past this size a head is refused by hyper anyway, so scanning further would only
/// cost work. It must be at least hyper's read buffer (`max_buf_size`, at most 1 MiB
/// as `server.rs` sets it): a head hyper can parse but the scanner gave up on would get
/// no verdict, and so no check.
const MAX_HEAD_BYTES: usize = 1024 * 1024;

/// Longest header name kept; the names we look for are all shorter.
const NAME_CAP: usize = 32;

/// Facts about one request head, as the bytes arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadVerdict {
    /// The first problem found in the head, if any: answer 400 and close.
    pub problem: Option<HeadProblem>,
}

/// Why a request head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadProblem {
    ContentLengthWithTransferEncoding,
    ConflictingContentLength,
    /// A `content-length` that is not a list of decimal numbers (hyper refuses these too).
    InvalidContentLength,
    TransferEncodingNotChunked,
    BareLineFeed,
    BareCarriageReturn,
    Nul,
    ObsFold,
    FragmentInTarget,
}

impl HeadProblem {
    /// A short explanation for the client and the logs.
    pub fn message(self) -> &'static str {
        match self {
            Self::ContentLengthWithTransferEncoding => "both content-length and transfer-encoding are present",
            Self::ConflictingContentLength => "content-length values differ",
            Self::InvalidContentLength => "content-length is not a decimal number",
            Self::TransferEncodingNotChunked => "transfer-encoding must be exactly `chunked`",
            Self::BareLineFeed => "line feed without carriage return in the request head",
            Self::BareCarriageReturn => "carriage return without line feed in the request head",
            Self::Nul => "NUL byte in the request head",
            Self::ObsFold => "obsolete line folding in a header",
            Self::FragmentInTarget => "fragment (`#`) in the request target",
        }
    }
}

impl HeadProblem {
    const ALL: [HeadProblem; 9] = [
        Self::ContentLengthWithTransferEncoding,
        Self::ConflictingContentLength,
        Self::InvalidContentLength,
        Self::TransferEncodingNotChunked,
        Self::BareLineFeed,
        Self::BareCarriageReturn,
        Self::Nul,
        Self::ObsFold,
        Self::FragmentInTarget,
    ];
}

/// Per-connection queue of verdicts, one per request head in arrival order.
///
/// The scanner (inside hyper's reads) pushes, the service pops; both run on the
/// connection's task. The scanner stops at the first problem, so only the last verdict
/// pushed can carry one: two counters and that problem stand for the whole queue, with
/// no lock and no allocation.
#[derive(Clone, Default)]
pub struct Verdicts(Arc<Queue>);

#[derive(Default)]
struct Queue {
    /// Verdicts pushed so far.
    pushed: AtomicU64,
    /// Verdicts popped so far.
    popped: AtomicU64,
    /// The problem of the last verdict pushed: 0 for none, else its index in
    /// [`HeadProblem::ALL`] plus one.
    problem: AtomicU8,
}

impl Verdicts {
    /// The verdict for the next request. Call exactly once per request, in order.
    /// Empty (no problem) once the scanner has stopped following the connection.
    pub fn pop(&self) -> HeadVerdict {
        let queue = &*self.0;
        let popped = queue.popped.load(Ordering::Relaxed);
        let pushed = queue.pushed.load(Ordering::Acquire);
        if popped >= pushed {
            return HeadVerdict::default();
        }
        queue.popped.store(popped + 1, Ordering::Relaxed);
        if popped + 1 < pushed {
            return HeadVerdict::default();
        }
        let code = usize::from(queue.problem.load(Ordering::Relaxed));
        HeadVerdict { problem: code.checked_sub(1).and_then(|i| HeadProblem::ALL.get(i).copied()) }
    }

    /// Verdicts pushed and not popped yet.
    #[cfg(test)]
    fn len(&self) -> u64 {
        self.0.pushed.load(Ordering::Relaxed) - self.0.popped.load(Ordering::Relaxed)
    }

    fn push(&self, verdict: HeadVerdict) {
        let queue = &*self.0;
        if let Some(problem) = verdict.problem {
            let index = HeadProblem::ALL.iter().position(|p| *p == problem).unwrap_or(0);
            queue.problem.store(u8::try_from(index + 1).unwrap_or(u8::MAX), Ordering::Relaxed);
        }
        let pushed = queue.pushed.load(Ordering::Relaxed);
        queue.pushed.store(pushed + 1, Ordering::Release);
    }
}

pin_project! {
    /// An I/O stream whose reads are scanned by a [`HeadScanner`]; writes pass through.
    /// The connection's clock learns where heads start and end.
    pub struct StrictIo<T> {
        #[pin]
        inner: T,
        scanner: HeadScanner,
        verdicts: Verdicts,
        clock: ConnClock,
        // The 408 being written once the clock timed the head out, and how much is sent.
        timeout_reply: Option<(Vec<u8>, usize)>,
        // Whether hyper's last write was flushed in full: a 408 must never land inside a
        // response hyper is still sending (a pipelined head behind a slowly read response).
        flushed: bool,
    }
}

impl<T> StrictIo<T> {
    pub fn new(inner: T, verdicts: Verdicts, clock: ConnClock) -> Self {
        Self { inner, scanner: HeadScanner::default(), verdicts, clock, timeout_reply: None, flushed: true }
    }
}

/// The whole 408 answer to a head that did not arrive within `header_read_timeout`: written
/// under hyper, which never saw a complete request to answer.
fn request_timeout_reply() -> Vec<u8> {
    let id = RequestId::generate();
    let body =
        GatewayError::new(ErrorKind::RequestTimeout, "the request head did not arrive within header_read_timeout")
            .json_body(&id);
    format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nx-request-id: {}\r\n\r\n{body}",
        body.len(),
        id.as_str()
    )
    .into_bytes()
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for StrictIo<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.clock.head_timed_out() {
            // Answer 408, then report the end of the stream: hyper drops the partial head
            // (no answer of its own to an incomplete one) and the connection ends. Unless
            // hyper still has bytes of a response on their way: then just the end.
            if !*this.flushed && this.timeout_reply.is_none() {
                return Poll::Ready(Ok(()));
            }
            let (reply, sent) = this.timeout_reply.get_or_insert_with(|| (request_timeout_reply(), 0));
            while *sent < reply.len() {
                match ready!(this.inner.as_mut().poll_write(cx, &reply[*sent..])) {
                    Ok(n) if n > 0 => *sent += n,
                    // The client is gone: nothing more to say.
                    _ => *sent = reply.len(),
                }
            }
            // Half-close after it, so the client reads the 408 before the connection ends.
            let _ = ready!(this.inner.as_mut().poll_shutdown(cx));
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.inner.poll_read(cx, buf))?;
        // Only the bytes this read added: what was filled before was scanned already.
        this.scanner.scan(&buf.filled()[before..], this.verdicts);
        this.clock.head_progress(this.scanner.in_head());
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for StrictIo<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        *this.flushed = false;
        this.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let flushed = ready!(this.inner.poll_flush(cx));
        *this.flushed = flushed.is_ok();
        Poll::Ready(flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        *this.flushed = false;
        this.inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Incremental scanner over the bytes a client sends on one HTTP/1.1 connection.
///
/// Bytes may arrive split anywhere; the state is a few counters and a small name
/// buffer, never the whole head.
#[derive(Default)]
pub struct HeadScanner {
    state: State,
}

enum State {
    /// Inside a request head, or before one.
    Head(Head),
    /// Skipping this many bytes of a `content-length` body.
    Body(u64),
    /// Inside a chunked body.
    Chunked(Chunk),
    /// No longer following the stream: nothing more is checked on this connection.
    Passthrough,
}

impl Default for State {
    fn default() -> Self {
        State::Head(Head::default())
    }
}

impl HeadScanner {
    /// Whether part of a request head has arrived and its end has not. Empty lines before a
    /// request line (RFC 9112 §2.2: old clients send a CRLF after a POST body) do not start
    /// a head: they must not start `header_read_timeout`, nor earn an unasked 408.
    pub fn in_head(&self) -> bool {
        matches!(&self.state, State::Head(head) if head.bytes > 0 && head.line != Line::Leading)
    }

    /// Scan the next bytes of the stream, pushing a verdict for each head that ends
    /// (or goes wrong) within them.
    pub fn scan(&mut self, mut bytes: &[u8], verdicts: &Verdicts) {
        while let Some((&byte, rest)) = bytes.split_first() {
            match &mut self.state {
                State::Passthrough => return,
                State::Body(remaining) => {
                    bytes = &bytes[skip(remaining, bytes.len())..];
                    if *remaining == 0 {
                        self.state = State::default();
                    }
                }
                State::Chunked(Chunk::Data(remaining)) => {
                    bytes = &bytes[skip(remaining, bytes.len())..];
                    if *remaining == 0 {
                        self.state = State::Chunked(Chunk::DataCr);
                    }
                }
                State::Chunked(chunk) => {
                    bytes = rest;
                    self.state = chunk.step(byte);
                }
                State::Head(head) => {
                    // Runs of bytes that need no look one by one (most of a head) go at once.
                    let run = head.plain_run(bytes);
                    if run > 0 {
                        head.bytes += run;
                        if head.bytes > MAX_HEAD_BYTES {
                            self.state = State::Passthrough;
                            continue;
                        }
                        head.skip_plain(&bytes[..run]);
                        bytes = &bytes[run..];
                        continue;
                    }
                    bytes = rest;
                    head.bytes += 1;
                    if head.bytes > MAX_HEAD_BYTES {
                        self.state = State::Passthrough;
                        continue;
                    }
                    match head.byte(byte) {
                        Ok(false) => {}
                        Ok(true) => {
                            verdicts.push(HeadVerdict::default());
                            self.state = head.after();
                        }
                        Err(problem) => {
                            // Pushed at once rather than at the end of the head: with a
                            // bare LF or CR, where the head ends is exactly what is in doubt.
                            verdicts.push(HeadVerdict { problem: Some(problem) });
                            self.state = State::Passthrough;
                        }
                    }
                }
            }
        }
    }
}

/// Consume up to `available` bytes of the `remaining` ones; how many were consumed.
fn skip(remaining: &mut u64, available: usize) -> usize {
    let n = usize::try_from(*remaining).map_or(available, |r| r.min(available));
    *remaining -= n as u64;
    n
}

/// Where in the head the current line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Line {
    /// Empty lines before the request line, which RFC 9112 §2.2 allows.
    #[default]
    Leading,
    Request,
    /// A header line, up to its colon (or an empty line, ending the head).
    Name,
    Value,
}

/// The state of one request head.
#[derive(Default)]
struct Head {
    /// Bytes of this head so far, for [`MAX_HEAD_BYTES`].
    bytes: usize,
    line: Line,
    /// Content bytes in the current line (line endings excluded).
    line_len: usize,
    /// The previous byte was a CR: the next one must be LF.
    cr: bool,
    /// Spaces seen in the request line: the target lies between the first and second.
    spaces: usize,
    method_len: usize,
    /// The method differs from `CONNECT` at some byte.
    method_not_connect: bool,
    name: [u8; NAME_CAP],
    name_len: usize,
    /// The header whose value is being read, if it is one we look at.
    field: Field,
    content_length: Option<u64>,
    chunked: bool,
    upgrade: bool,
}

impl Head {
    /// How many of the next bytes can be taken as a run: bytes that are neither a line
    /// ending nor NUL inside a header value that does not matter for framing, in the
    /// request line after the target, or inside a header name before its colon. Taking
    /// them one by one would change nothing but the counters and the name buffer.
    fn plain_run(&self, bytes: &[u8]) -> usize {
        if self.cr {
            return 0;
        }
        let colon_ends = match self.line {
            Line::Value if matches!(self.field, Field::Other) => false,
            Line::Request if self.spaces >= 2 => false,
            // The first byte of a name line is where obs-fold shows.
            Line::Name if self.line_len > 0 => true,
            _ => return 0,
        };
        bytes.iter().position(|&b| matches!(b, b'\r' | b'\n' | 0) || (colon_ends && b == b':')).unwrap_or(bytes.len())
    }

    /// Take a run that [`plain_run`](Self::plain_run) measured.
    fn skip_plain(&mut self, run: &[u8]) {
        if self.line == Line::Name {
            let start = self.name_len.min(NAME_CAP);
            for (slot, byte) in self.name[start..].iter_mut().zip(run) {
                *slot = byte.to_ascii_lowercase();
            }
            self.name_len = self.name_len.saturating_add(run.len());
        }
        self.line_len += run.len();
    }

    /// Take one byte; `Ok(true)` once the empty line ending the head is complete.
    fn byte(&mut self, byte: u8) -> Result<bool, HeadProblem> {
        if std::mem::take(&mut self.cr) {
            return match byte {
                b'\n' => self.end_of_line(),
                _ => Err(HeadProblem::BareCarriageReturn),
            };
        }
        match byte {
            b'\r' => self.cr = true,
            b'\n' => return Err(HeadProblem::BareLineFeed),
            0 => return Err(HeadProblem::Nul),
            _ => {
                self.line_byte(byte)?;
                self.line_len += 1;
            }
        }
        Ok(false)
    }

    /// A byte of line content (not CR, LF or NUL).
    fn line_byte(&mut self, byte: u8) -> Result<(), HeadProblem> {
        match self.line {
            Line::Leading => {
                self.line = Line::Request;
                self.request_byte(byte)
            }
            Line::Request => self.request_byte(byte),
            Line::Name if self.line_len == 0 && matches!(byte, b' ' | b'\t') => Err(HeadProblem::ObsFold),
            Line::Name => {
                self.name_byte(byte);
                Ok(())
            }
            Line::Value => {
                self.field.byte(byte);
                Ok(())
            }
        }
    }

    fn request_byte(&mut self, byte: u8) -> Result<(), HeadProblem> {
        match (self.spaces, byte) {
            (_, b' ') => self.spaces += 1,
            (0, _) => {
                self.method_not_connect |= b"CONNECT".get(self.method_len) != Some(&byte);
                self.method_len += 1;
            }
            // hyper would strip the fragment silently: the service would never know.
            (1, b'#') => return Err(HeadProblem::FragmentInTarget),
            _ => {}
        }
        Ok(())
    }

    fn name_byte(&mut self, byte: u8) {
        if byte != b':' {
            if let Some(slot) = self.name.get_mut(self.name_len) {
                *slot = byte.to_ascii_lowercase();
            }
            self.name_len = self.name_len.saturating_add(1);
            return;
        }
        // A name longer than the buffer is none we look for.
        let name = self.name.get(..self.name_len).unwrap_or_default();
        self.field = match name {
            b"content-length" => Field::ContentLength(LengthList::default()),
            b"transfer-encoding" => Field::TransferEncoding(ChunkedOnly::default()),
            _ => Field::Other,
        };
        // hyper hands the connection over on any `upgrade` header, whatever its value.
        self.upgrade |= name == b"upgrade";
        self.line = Line::Value;
    }

    /// A CRLF: `Ok(true)` when it was the empty line ending the head.
    fn end_of_line(&mut self) -> Result<bool, HeadProblem> {
        let empty = std::mem::take(&mut self.line_len) == 0;
        match self.line {
            Line::Leading => {}
            Line::Request => self.line = Line::Name,
            Line::Name if empty => return Ok(true),
            // A header line without a colon: hyper refuses the head, nothing to record.
            Line::Name => self.name_len = 0,
            Line::Value => {
                self.line = Line::Name;
                self.name_len = 0;
                let field = std::mem::take(&mut self.field);
                self.end_of_field(field)?;
            }
        }
        Ok(false)
    }

    /// Check a complete `content-length` or `transfer-encoding` line against the
    /// lines before it.
    fn end_of_field(&mut self, field: Field) -> Result<(), HeadProblem> {
        match field {
            Field::Other => {}
            Field::ContentLength(list) => {
                if self.chunked {
                    return Err(HeadProblem::ContentLengthWithTransferEncoding);
                }
                let length = list.finish()?;
                if self.content_length.is_some_and(|previous| previous != length) {
                    return Err(HeadProblem::ConflictingContentLength);
                }
                self.content_length = Some(length);
            }
            Field::TransferEncoding(coding) => {
                if self.content_length.is_some() {
                    return Err(HeadProblem::ContentLengthWithTransferEncoding);
                }
                // A second header (even `chunked` again) is a coding list longer than
                // `chunked`: hyper would only look at the last one.
                if self.chunked || !coding.is_chunked() {
                    return Err(HeadProblem::TransferEncodingNotChunked);
                }
                self.chunked = true;
            }
        }
        Ok(())
    }

    fn is_connect(&self) -> bool {
        !self.method_not_connect && self.method_len == b"CONNECT".len()
    }

    /// What follows a clean head.
    fn after(&self) -> State {
        if self.upgrade || self.is_connect() {
            // What follows may be a tunnel, not HTTP; the gateway closes the
            // connection if it does not switch protocols.
            State::Passthrough
        } else if self.chunked {
            State::Chunked(Chunk::SizeStart)
        } else {
            match self.content_length {
                Some(length) if length > 0 => State::Body(length),
                _ => State::default(),
            }
        }
    }
}

/// The value being read of a header that matters for framing.
#[derive(Default)]
enum Field {
    #[default]
    Other,
    ContentLength(LengthList),
    TransferEncoding(ChunkedOnly),
}

impl Field {
    fn byte(&mut self, byte: u8) {
        match self {
            Field::Other => {}
            Field::ContentLength(list) => list.byte(byte),
            Field::TransferEncoding(coding) => coding.byte(byte),
        }
    }
}

/// A `content-length` value read incrementally: a comma-separated list of decimal
/// numbers with optional whitespace, all of which must be equal.
#[derive(Default)]
struct LengthList {
    at: LengthAt,
    current: u64,
    value: Option<u64>,
    problem: Option<HeadProblem>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum LengthAt {
    #[default]
    BeforeDigits,
    Digits,
    AfterDigits,
}

impl LengthList {
    fn byte(&mut self, byte: u8) {
        if self.problem.is_some() {
            return;
        }
        match (self.at, byte) {
            (LengthAt::BeforeDigits | LengthAt::AfterDigits, b' ' | b'\t') => {}
            (LengthAt::BeforeDigits | LengthAt::Digits, b'0'..=b'9') => {
                let digit = u64::from(byte - b'0');
                match self.current.checked_mul(10).and_then(|n| n.checked_add(digit)) {
                    Some(n) => self.current = n,
                    None => self.problem = Some(HeadProblem::InvalidContentLength),
                }
                self.at = LengthAt::Digits;
            }
            (LengthAt::Digits, b' ' | b'\t') => self.at = LengthAt::AfterDigits,
            (LengthAt::Digits | LengthAt::AfterDigits, b',') => self.end_of_number(),
            _ => self.problem = Some(HeadProblem::InvalidContentLength),
        }
    }

    fn end_of_number(&mut self) {
        let number = std::mem::take(&mut self.current);
        if self.value.is_some_and(|value| value != number) {
            self.problem = Some(HeadProblem::ConflictingContentLength);
        }
        self.value = Some(number);
        self.at = LengthAt::BeforeDigits;
    }

    /// The length, once the line has ended.
    fn finish(mut self) -> Result<u64, HeadProblem> {
        if self.problem.is_none() {
            match self.at {
                LengthAt::Digits | LengthAt::AfterDigits => self.end_of_number(),
                // Empty, or a trailing comma.
                LengthAt::BeforeDigits => self.problem = Some(HeadProblem::InvalidContentLength),
            }
        }
        match (self.problem, self.value) {
            (None, Some(value)) => Ok(value),
            (Some(problem), _) => Err(problem),
            (None, None) => Err(HeadProblem::InvalidContentLength),
        }
    }
}

/// Whether a `transfer-encoding` value is exactly `chunked` (any letter case, optional
/// surrounding whitespace), read incrementally.
#[derive(Default)]
struct ChunkedOnly {
    at: CodingAt,
    matched: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum CodingAt {
    #[default]
    Leading,
    Word,
    Trailing,
    Mismatch,
}

impl ChunkedOnly {
    const WORD: &'static [u8] = b"chunked";

    fn byte(&mut self, byte: u8) {
        let space = matches!(byte, b' ' | b'\t');
        self.at = match self.at {
            CodingAt::Leading if space => CodingAt::Leading,
            CodingAt::Leading | CodingAt::Word => match Self::WORD.get(self.matched) {
                Some(&expected) if byte.to_ascii_lowercase() == expected => {
                    self.matched += 1;
                    CodingAt::Word
                }
                None if space => CodingAt::Trailing,
                _ => CodingAt::Mismatch,
            },
            CodingAt::Trailing if space => CodingAt::Trailing,
            CodingAt::Trailing | CodingAt::Mismatch => CodingAt::Mismatch,
        };
    }

    fn is_chunked(&self) -> bool {
        matches!(self.at, CodingAt::Word | CodingAt::Trailing) && self.matched == Self::WORD.len()
    }
}

/// Where in a chunked body the scanner is. The grammar accepted is hyper's (its
/// `ChunkedState`), so that both agree on where the body ends; where hyper would
/// fail, the scanner stops following the connection (hyper closes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The first hex digit of a chunk size.
    SizeStart,
    Size(u64),
    /// Whitespace after the size, before `;` or CR.
    SizeSpace(u64),
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
}

impl Chunk {
    fn step(self, byte: u8) -> State {
        let next = match self {
            Chunk::SizeStart => hex_digit(byte).map(Chunk::Size),
            Chunk::Size(size) => match (hex_digit(byte), byte) {
                (Some(digit), _) => size.checked_mul(16).and_then(|s| s.checked_add(digit)).map(Chunk::Size),
                (None, b' ' | b'\t') => Some(Chunk::SizeSpace(size)),
                (None, b';') => Some(Chunk::Extension(size)),
                (None, b'\r') => Some(Chunk::SizeLf(size)),
                (None, _) => None,
            },
            Chunk::SizeSpace(size) => match byte {
                b' ' | b'\t' => Some(Chunk::SizeSpace(size)),
                b';' => Some(Chunk::Extension(size)),
                b'\r' => Some(Chunk::SizeLf(size)),
                _ => None,
            },
            Chunk::Extension(size) => match byte {
                b'\r' => Some(Chunk::SizeLf(size)),
                b'\n' => None,
                _ => Some(Chunk::Extension(size)),
            },
            Chunk::SizeLf(size) => match byte {
                b'\n' if size == 0 => Some(Chunk::TrailerStart),
                b'\n' => Some(Chunk::Data(size)),
                _ => None,
            },
            // Data is normally skipped in bulk by `HeadScanner::scan`.
            Chunk::Data(remaining) => Some(if remaining > 1 { Chunk::Data(remaining - 1) } else { Chunk::DataCr }),
            Chunk::DataCr => (byte == b'\r').then_some(Chunk::DataLf),
            Chunk::DataLf => (byte == b'\n').then_some(Chunk::SizeStart),
            Chunk::TrailerStart => Some(if byte == b'\r' { Chunk::EndLf } else { Chunk::Trailer }),
            Chunk::Trailer => Some(if byte == b'\r' { Chunk::TrailerLf } else { Chunk::Trailer }),
            Chunk::TrailerLf => (byte == b'\n').then_some(Chunk::TrailerStart),
            Chunk::EndLf if byte == b'\n' => return State::default(),
            Chunk::EndLf => None,
        };
        next.map_or(State::Passthrough, State::Chunked)
    }
}

fn hex_digit(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

#[cfg(test)]
mod props;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::HeadProblem::*;
    use super::*;

    /// What a scan produced: the problems per head, and whether the scanner stopped
    /// following the stream.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        problems: Vec<Option<HeadProblem>>,
        passthrough: bool,
        /// Between requests: the last body was skipped exactly, nothing of a head yet.
        at_boundary: bool,
    }

    fn scan_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
        let verdicts = Verdicts::default();
        let mut scanner = HeadScanner::default();
        for piece in pieces {
            scanner.scan(piece, &verdicts);
        }
        let problems = (0..verdicts.len()).map(|_| verdicts.pop().problem).collect();
        assert_eq!(verdicts.pop(), HeadVerdict::default(), "an empty queue has no problem");
        Outcome {
            problems,
            passthrough: matches!(scanner.state, State::Passthrough),
            at_boundary: matches!(&scanner.state, State::Head(head) if head.bytes == 0),
        }
    }

    /// Scan `input` whole, split in two at every position, and one byte at a time:
    /// every way must give the same outcome, which is returned.
    fn scan(input: &[u8]) -> Outcome {
        let whole = scan_pieces([input]);
        for at in 0..=input.len() {
            let (a, b) = input.split_at(at);
            assert_eq!(scan_pieces([a, b]), whole, "split at {at}");
        }
        assert_eq!(scan_pieces(input.chunks(1)), whole, "one byte at a time");
        whole
    }

    fn clean(heads: usize) -> Outcome {
        Outcome { problems: vec![None; heads], passthrough: false, at_boundary: true }
    }

    fn refused(clean_heads: usize, problem: HeadProblem) -> Outcome {
        let mut problems = vec![None; clean_heads];
        problems.push(Some(problem));
        Outcome { problems, passthrough: true, at_boundary: false }
    }

    #[test]
    fn in_head_from_first_byte_to_the_empty_line() {
        let verdicts = Verdicts::default();
        let mut scanner = HeadScanner::default();
        assert!(!scanner.in_head());
        scanner.scan(b"\r\n", &verdicts);
        assert!(!scanner.in_head(), "an empty line before a request is not a head");
        scanner.scan(b"P", &verdicts);
        assert!(scanner.in_head());
        scanner.scan(b"OST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n", &verdicts);
        assert!(!scanner.in_head(), "the head is complete; the body is not a head");
        scanner.scan(b"okG", &verdicts);
        assert!(scanner.in_head(), "a pipelined head started");
    }

    #[test]
    fn clean_get() {
        assert_eq!(scan(b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"), clean(1));
    }

    #[test]
    fn empty_lines_before_a_request_line_are_allowed() {
        assert_eq!(scan(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), clean(2));
    }

    #[test]
    fn content_length_body_then_pipelined_get() {
        // The body holds bytes that would be problems in a head: they must be skipped.
        let input = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n#\n\0\r x\r\n\r\n\r\n\
                      GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(input), clean(2));
    }

    #[test]
    fn header_names_are_case_insensitive() {
        let input = b"POST / HTTP/1.1\r\nCONTENT-LENGTH: 3\r\n\r\n\n\n\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan(input), clean(2));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers_then_fragment() {
        // Chunk data containing CRLFs and a fake last-chunk: only the sizes count.
        let input = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n\
                      5;name=value\r\nab\ncd\r\n\
                      A ; x=\"y\"\r\n0\r\n\r\n\n\0#12\r\n\
                      0;last\r\nExpires: never\r\nX-Sum: 1\r\n\r\n\
                      GET /page#section HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(scan(input), refused(1, FragmentInTarget));
    }

    #[test]
    fn chunked_body_without_trailers() {
        let input = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan(input), clean(2));
    }

    #[test]
    fn fragment_only_counts_in_the_target() {
        assert_eq!(scan(b"GET /a HTTP/1.1\r\nX-Note: #1\r\n\r\n"), clean(1));
        assert_eq!(scan(b"GET #x HTTP/1.1\r\n\r\n"), refused(0, FragmentInTarget));
        assert_eq!(scan(b"GET http://a/b#x HTTP/1.1\r\n\r\n"), refused(0, FragmentInTarget));
    }

    #[test]
    fn content_length_with_transfer_encoding_in_either_order() {
        let cl_first = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let te_first = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(scan(cl_first), refused(0, ContentLengthWithTransferEncoding));
        assert_eq!(scan(te_first), refused(0, ContentLengthWithTransferEncoding));
    }

    #[test]
    fn content_length_values_must_agree() {
        let differing = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello";
        assert_eq!(scan(differing), refused(0, ConflictingContentLength));
        let same = b"POST / HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan(same), clean(2));
    }

    #[test]
    fn content_length_lists() {
        let same = b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
        assert_eq!(scan(same), clean(2));
        let differing = b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nhello";
        assert_eq!(scan(differing), refused(0, ConflictingContentLength));
    }

    #[test]
    fn content_length_must_be_decimal() {
        for value in ["", "abc", "-1", "+5", "5,", ",5", "5 6", "0x10", "99999999999999999999999"] {
            let input = format!("POST / HTTP/1.1\r\nContent-Length: {value}\r\n\r\n");
            assert_eq!(scan(input.as_bytes()), refused(0, InvalidContentLength), "{value:?}");
        }
    }

    #[test]
    fn transfer_encoding_must_be_chunked_alone() {
        for value in ["gzip, chunked", "identity", "chunked, chunked", "chunkedx", "chunk", "ch unked", ""] {
            let input = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {value}\r\n\r\n");
            assert_eq!(scan(input.as_bytes()), refused(0, TransferEncodingNotChunked), "{value:?}");
        }
        let twice = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scan(twice), refused(0, TransferEncodingNotChunked));
    }

    #[test]
    fn line_endings_must_be_crlf() {
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n"), refused(0, BareLineFeed));
        assert_eq!(scan(b"GET / HTTP/1.1\n\n"), refused(0, BareLineFeed));
        assert_eq!(scan(b"\nGET / HTTP/1.1\r\n\r\n"), refused(0, BareLineFeed));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n"), refused(0, BareCarriageReturn));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nHost: a\r\r\n\r\n"), refused(0, BareCarriageReturn));
    }

    #[test]
    fn nul_in_the_head() {
        assert_eq!(scan(b"GET / HTTP/1.1\r\nX-Name: a\0b\r\n\r\n"), refused(0, Nul));
        assert_eq!(scan(b"GET /\0 HTTP/1.1\r\n\r\n"), refused(0, Nul));
    }

    #[test]
    fn obs_fold() {
        assert_eq!(scan(b"GET / HTTP/1.1\r\nX-Long: a\r\n b\r\n\r\n"), refused(0, ObsFold));
        assert_eq!(scan(b"GET / HTTP/1.1\r\nX-Long: a\r\n\tb\r\n\r\n"), refused(0, ObsFold));
    }

    #[test]
    fn problems_in_a_later_pipelined_head() {
        let input = b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\nX: a\nb\r\n\r\n";
        assert_eq!(scan(input), refused(2, BareLineFeed));
    }

    #[test]
    fn upgrade_stops_the_scan() {
        let input = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\
                      \x81\x05\0\n\rGET /#x HTTP/1.1\r\n\r\n";
        assert_eq!(scan(input), Outcome { problems: vec![None], passthrough: true, at_boundary: false });
    }

    #[test]
    fn connect_stops_the_scan() {
        let input = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n\x16\x03\x01\0\n";
        assert_eq!(scan(input), Outcome { problems: vec![None], passthrough: true, at_boundary: false });
        // Only the exact method: hyper treats `CONNECTX` as an ordinary extension method.
        assert_eq!(scan(b"CONNECTX / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"), clean(2));
    }

    #[test]
    fn unframable_chunked_body_stops_the_scan() {
        for body in ["x\r\n", " 5\r\n", "5\n", "5\r\nabcdeXY", "3;ext\nabc", "ffffffffffffffffff\r\n"] {
            let input = format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}GET /#x HTTP/1.1\r\n\r\n");
            assert_eq!(
                scan(input.as_bytes()),
                Outcome { problems: vec![None], passthrough: true, at_boundary: false },
                "{body:?}"
            );
        }
    }

    #[test]
    fn oversized_head_stops_the_scan() {
        let mut input = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        input.resize(MAX_HEAD_BYTES + 10, b'a');
        input.extend_from_slice(b"\r\n\r\n");
        let outcome = scan_pieces(input.chunks(1000));
        assert_eq!(outcome, Outcome { problems: vec![], passthrough: true, at_boundary: false });
        assert_eq!(scan_pieces(input.chunks(1)), outcome);
    }

    #[test]
    fn pop_returns_clean_when_empty() {
        let verdicts = Verdicts::default();
        verdicts.push(HeadVerdict { problem: Some(ObsFold) });
        assert_eq!(verdicts.pop().problem, Some(ObsFold));
        assert_eq!(verdicts.pop(), HeadVerdict::default());
    }

    #[tokio::test]
    async fn strict_io_scans_what_it_reads() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let input: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 4\r\n\r\n\n\n\n\n\
                             GET /b HTTP/1.1\r\n\r\n\
                             GET /c#d HTTP/1.1\r\n\r\n";
        let (mut client, server) = tokio::io::duplex(7);
        let verdicts = Verdicts::default();
        let mut io = StrictIo::new(server, verdicts.clone(), ConnClock::new());

        let writer = tokio::spawn(async move {
            client.write_all(input).await.unwrap();
            let mut reply = Vec::new();
            client.read_to_end(&mut reply).await.unwrap();
            reply
        });

        let mut received = Vec::new();
        let mut buf = [0u8; 3];
        while received.len() < input.len() {
            let n = io.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "early EOF");
            received.extend_from_slice(&buf[..n]);
        }
        assert_eq!(received, input, "reads pass the bytes through unchanged");
        assert_eq!(verdicts.pop(), HeadVerdict::default());
        assert_eq!(verdicts.pop(), HeadVerdict::default());
        assert_eq!(verdicts.pop().problem, Some(FragmentInTarget));
        assert_eq!(verdicts.pop(), HeadVerdict::default());

        io.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        assert_eq!(writer.await.unwrap(), b"HTTP/1.1 400 Bad Request\r\n\r\n");
    }

    /// The wiring the gateway uses: hyper reads through `StrictIo`, and the verdict for
    /// each request is queued by the time hyper calls the service.
    #[tokio::test]
    async fn hyper_sees_verdicts_in_order() {
        use bytes::Bytes;
        use http_body_util::Full;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (mut client, server) = tokio::io::duplex(1024);
        let verdicts = Verdicts::default();
        let io = hyper_util::rt::TokioIo::new(StrictIo::new(server, verdicts.clone(), ConnClock::new()));
        let service = hyper::service::service_fn(move |_request| {
            let response = match verdicts.pop().problem {
                Some(problem) => http::Response::builder()
                    .status(400)
                    .header("connection", "close")
                    .body(Full::new(Bytes::from(problem.message()))),
                None => http::Response::builder().body(Full::new(Bytes::from("ok"))),
            };
            async move { response }
        });
        let connection = tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));

        // hyper itself accepts all three heads; it would hand the third one on with
        // `content-length` silently dropped.
        client
            .write_all(
                b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                  GET /b HTTP/1.1\r\n\r\n\
                  POST /c HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        let mut replies = Vec::new();
        client.read_to_end(&mut replies).await.unwrap();
        let replies = String::from_utf8(replies).unwrap();
        let statuses: Vec<&str> = replies.split("HTTP/1.1 ").skip(1).map(|reply| &reply[..3]).collect();
        assert_eq!(statuses, ["200", "200", "400"], "{replies}");
        assert!(replies.ends_with(ContentLengthWithTransferEncoding.message()), "{replies}");
        connection.await.unwrap().unwrap();
    }
}
