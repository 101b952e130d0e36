//! The queue of finished spans between the request path and the exporter task.
//!
//! A span is finished on whatever thread served its request. A channel send per span costs
//! atomics on a shared tail, block management and a waker check on every request; here
//! finishing a span takes an uncontended lock on one of a few buffers (picked by thread) and
//! a push. The exporter takes every buffer's contents when it wakes. The queue is bounded in
//! spans, counting those the exporter has taken and not yet sent: a collector that is slow or
//! down never makes the gateway hold more than `capacity` spans.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::span::SpanRecord;

pub(crate) struct SpanQueue {
    shards: Box<[Mutex<Vec<SpanRecord>>]>,
    /// Spans pushed and not yet released by the exporter; at most `capacity`.
    len: AtomicUsize,
    capacity: usize,
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
        let shards = (0..threads.clamp(4, 64)).map(|_| Mutex::new(Vec::new())).collect();
        SpanQueue { shards, len: AtomicUsize::new(0), capacity, closed: AtomicBool::new(false) }
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

    /// Queue a span whose place [`reserve`](Self::reserve) took.
    pub(crate) fn push(&self, span: SpanRecord) {
        let shard = &self.shards[shard_of_this_thread() % self.shards.len()];
        shard.lock().unwrap_or_else(|e| e.into_inner()).push(span);
    }

    /// Move every queued span to `out`. They keep their places until [`release`](Self::release).
    pub(crate) fn take_into(&self, out: &mut Vec<SpanRecord>) {
        for shard in &self.shards {
            out.append(&mut shard.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    /// Give back the places of `spans` taken spans (sent, or lost).
    pub(crate) fn release(&self, spans: usize) {
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
