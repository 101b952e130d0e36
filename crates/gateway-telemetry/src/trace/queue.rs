//! The queue of finished spans between the request path and the exporter task.
//!
//! A span is finished on whatever thread served its request, and is encoded there, straight
//! into one of a few byte buffers (picked by thread, so the lock is uncontended): no record
//! is moved between threads, and what the span holds (shared names, request buffers) is let
//! go on the thread that took it. The exporter swaps the buffers out when it wakes and sends
//! their bytes as they are, inside one request envelope per batch. The queue is bounded in
//! spans and in bytes, counting those the exporter has taken and not yet sent: a collector
//! that is slow or down never makes the gateway hold more than `capacity` spans, nor more
//! than [`BYTES_PER_SPAN`] times that (spans with long paths or user agents are larger).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::otlp::Memo;

/// A buffer that grew past this in a burst is given back to the allocator once sent.
const KEEP_CAPACITY: usize = 1024 * 1024;
/// The queue holds at most this many bytes per span of its capacity: some three times a
/// typical span in protobuf, twice in JSON.
pub(crate) const BYTES_PER_SPAN: usize = 2048;

/// Encoded spans, one after another, and where each ends.
#[derive(Default)]
pub(crate) struct Encoded {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Encoded {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        if self.bytes.capacity() > KEEP_CAPACITY {
            self.bytes.shrink_to(KEEP_CAPACITY);
            self.ends.shrink_to(KEEP_CAPACITY / 256);
        }
    }
}

/// One thread's buffer, and the memo of the encoder writing into it.
#[derive(Default)]
struct Shard {
    encoded: Encoded,
    memo: Memo,
}

/// Up to `size` spans of `buffers` (in order, across buffers): the runs of bytes that hold
/// them, how many spans, and their bytes.
pub(crate) struct Batch<'a> {
    pub(crate) runs: Vec<&'a [u8]>,
    pub(crate) spans: usize,
    pub(crate) bytes: usize,
}

/// Every span of `buffers`, in batches of up to `size` (the last may be smaller).
pub(crate) fn batches(buffers: &[Encoded], size: usize) -> Vec<Batch<'_>> {
    let size = size.max(1);
    let mut all = Vec::new();
    let mut batch = Batch { runs: Vec::new(), spans: 0, bytes: 0 };
    for buffer in buffers {
        let mut start = 0;
        for (i, &end) in buffer.ends.iter().enumerate() {
            batch.spans += 1;
            let last_of_buffer = i + 1 == buffer.ends.len();
            if batch.spans == size || last_of_buffer {
                batch.runs.push(&buffer.bytes[start..end]);
                batch.bytes += end - start;
                start = end;
            }
            if batch.spans == size {
                all.push(std::mem::replace(&mut batch, Batch { runs: Vec::new(), spans: 0, bytes: 0 }));
            }
        }
    }
    if batch.spans > 0 {
        all.push(batch);
    }
    all
}

pub(crate) struct SpanQueue {
    shards: Box<[Mutex<Shard>]>,
    /// Spans pushed and not yet released by the exporter; at most `capacity`.
    len: AtomicUsize,
    capacity: usize,
    /// Their encoded bytes; a span is refused once this reaches `max_bytes`.
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Set when the tracer goes: the exporter sends what is left and stops.
    closed: AtomicBool,
}

/// Which buffer the current thread pushes to: threads take turns, so a gateway's workers
/// (one per core) each get their own.
fn shard_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|s| *s)
}

impl SpanQueue {
    pub(crate) fn new(capacity: usize) -> SpanQueue {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (0..threads.clamp(4, 64)).map(|_| Mutex::new(Shard::default())).collect();
        SpanQueue {
            shards,
            len: AtomicUsize::new(0),
            capacity,
            bytes: AtomicUsize::new(0),
            max_bytes: capacity.saturating_mul(BYTES_PER_SPAN),
            closed: AtomicBool::new(false),
        }
    }

    /// Take a place for one more span: the new length, or `None` when the queue is full.
    pub(crate) fn reserve(&self) -> Option<usize> {
        let before = self.len.fetch_add(1, Ordering::AcqRel);
        if before >= self.capacity {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(before + 1)
    }

    /// Queue a span whose place [`reserve`](Self::reserve) took: `encode` appends it (with
    /// this buffer's memo). `false` when the queue's bytes are at their bound: the span is
    /// not queued, and its place is given back.
    pub(crate) fn push(&self, encode: impl FnOnce(&mut Vec<u8>, &mut Memo)) -> bool {
        if self.bytes.load(Ordering::Relaxed) >= self.max_bytes {
            self.release(1, 0);
            return false;
        }
        let shard = &self.shards[shard_of_this_thread() % self.shards.len()];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let Shard { encoded, memo } = &mut *shard;
        // Nothing but whole spans: what a panic left half-written goes.
        let start = encoded.ends.last().copied().unwrap_or(0);
        encoded.bytes.truncate(start);
        encode(&mut encoded.bytes, memo);
        encoded.ends.push(encoded.bytes.len());
        self.bytes.fetch_add(encoded.bytes.len() - start, Ordering::Relaxed);
        true
    }

    /// How many buffers there are, for [`swap_out`](Self::swap_out).
    pub(crate) fn buffers(&self) -> usize {
        self.shards.len()
    }

    /// Swap buffer `index` with `spare` (cleared), so the lock is held only for the swap. The
    /// spans taken keep their places until [`release`](Self::release).
    pub(crate) fn swap_out(&self, index: usize, spare: &mut Encoded) {
        spare.clear();
        std::mem::swap(spare, &mut self.shards[index].lock().unwrap_or_else(|e| e.into_inner()).encoded);
    }

    /// Give back the places of `spans` taken spans of `bytes` bytes (sent, or lost).
    pub(crate) fn release(&self, spans: usize, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.len.fetch_sub(spans, Ordering::AcqRel);
    }

    /// Spans queued or being sent.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_at_span_boundaries_across_buffers() {
        let buffer = |spans: &[&[u8]]| {
            let mut encoded = Encoded::default();
            for span in spans {
                encoded.bytes.extend_from_slice(span);
                encoded.ends.push(encoded.bytes.len());
            }
            encoded
        };
        let buffers = [buffer(&[b"aa", b"b", b"ccc"]), buffer(&[]), buffer(&[b"", b"dd"])];
        let seen = |size| {
            batches(&buffers, size)
                .into_iter()
                .map(|b| (b.runs.concat(), b.runs.len(), b.spans, b.bytes))
                .collect::<Vec<_>>()
        };
        assert_eq!(seen(2), [(b"aab".to_vec(), 1, 2, 3), (b"ccc".to_vec(), 2, 2, 3), (b"dd".to_vec(), 1, 1, 2)]);
        assert_eq!(seen(10), [(b"aabcccdd".to_vec(), 2, 5, 8)]);
        assert_eq!(seen(1).len(), 5);
        assert!(batches(&[Encoded::default()], 2).is_empty());
    }
}
