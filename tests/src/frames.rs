//! Hand-built HTTP/2 frames over raw TCP (h2c with prior knowledge), for the attacks no
//! well-behaved client library would send: rapid resets, CONTINUATION floods, HPACK
//! bombs, forbidden headers, lying `content-length`s.
//!
//! Header blocks are HPACK without Huffman coding: literal fields, optionally added to
//! the dynamic table, and indexed references to them.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
}

/// Error codes (RFC 9113 §7).
pub mod reason {
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const CANCEL: u32 = 0x8;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
}

/// One frame as read from the server.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY frame.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            kind::RST_STREAM => 0,
            kind::GOAWAY => 4,
            _ => return None,
        };
        let bytes = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A RST_STREAM frame.
pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(kind::RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// An HPACK integer with an `n`-bit prefix; `first` holds the bits above the prefix.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// A header block under construction.
#[derive(Default, Clone)]
pub struct Block(pub Vec<u8>);

impl Block {
    /// Literal fields without indexing, in order (pseudo-headers first).
    pub fn of(fields: &[(&str, &str)]) -> Block {
        let mut block = Block::default();
        for (name, value) in fields {
            block = block.literal(name, value.as_bytes());
        }
        block
    }

    /// The request pseudo-headers of a request for `path` on `http://a`.
    pub fn request(method: &str, path: &str) -> Block {
        Block::of(&[(":method", method), (":scheme", "http"), (":authority", "a"), (":path", path)])
    }

    /// A literal field without indexing (RFC 7541 §6.2.2).
    pub fn literal(mut self, name: &str, value: &[u8]) -> Block {
        self.0.push(0x00);
        hpack_str(&mut self.0, name.as_bytes());
        hpack_str(&mut self.0, value);
        self
    }

    /// A literal field added to the dynamic table (RFC 7541 §6.2.1): it becomes index 62.
    pub fn indexed_literal(mut self, name: &str, value: &[u8]) -> Block {
        self.0.push(0x40);
        hpack_str(&mut self.0, name.as_bytes());
        hpack_str(&mut self.0, value);
        self
    }

    /// A reference to table entry `index` (RFC 7541 §6.1), `times` times.
    pub fn indexed(mut self, index: usize, times: usize) -> Block {
        for _ in 0..times {
            hpack_int(&mut self.0, 0x80, 7, index);
        }
        self
    }
}

/// A raw h2c connection: preface and SETTINGS written, frames read one by one.
pub struct H2 {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server closed the connection (or reset it).
    closed: bool,
}

impl H2 {
    /// Connect, send the preface and an empty SETTINGS frame.
    pub async fn connect(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut h2 = H2 { stream, buf: Vec::new(), closed: false };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(kind::SETTINGS, 0, 0, &[]));
        h2.send(&hello).await.unwrap();
        h2
    }

    /// Write bytes (any number of frames); an error once the server has closed.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// A HEADERS frame for `stream` with the whole block (END_HEADERS set).
    pub async fn headers(&mut self, stream: u32, block: &Block, end_stream: bool) -> std::io::Result<()> {
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        self.send(&frame(kind::HEADERS, flags, stream, &block.0)).await
    }

    /// The next frame, answering the server's SETTINGS and PINGs on the way; `None`
    /// once the server closed the connection or nothing came for `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let frame = Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    };
                    let ack = match frame.kind {
                        kind::SETTINGS if frame.flags & flag::ACK == 0 => {
                            Some(self::frame(kind::SETTINGS, flag::ACK, 0, &[]))
                        }
                        kind::PING if frame.flags & flag::ACK == 0 => {
                            Some(self::frame(kind::PING, flag::ACK, 0, &frame.payload))
                        }
                        _ => None,
                    };
                    if let Some(ack) = ack {
                        let _ = self.send(&ack).await;
                    }
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout(wait, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                Ok(_) => {
                    self.closed = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Read frames until one matches `want`; `None` if the connection closed or `wait`
    /// passed first.
    pub async fn until(&mut self, wait: Duration, want: impl Fn(&Frame) -> bool) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(frame) if want(&frame) => return Some(frame),
                Some(_) if !left.is_zero() => {}
                _ => return None,
            }
        }
    }

    /// Read (and acknowledge) frames until the server closes the connection, at most
    /// `wait`; whether it closed.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        while !self.closed {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            self.next(left).await;
        }
        self.closed
    }
}
