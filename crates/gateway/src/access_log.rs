//! The access log's writer: lines are handed to one background thread through a bounded
//! queue, so a slow terminal or pipe never slows a request. When the queue is full, lines
//! are dropped and counted rather than waited for.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

const QUEUE_LINES: usize = 16 * 1024;

struct Writer {
    queue: SyncSender<String>,
}

/// Counted outside the writer, so reading it (for `/metrics`) starts nothing.
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn writer() -> &'static Writer {
    static WRITER: OnceLock<Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (queue, lines) = sync_channel::<String>(QUEUE_LINES);
        let spawned = std::thread::Builder::new().name("gateway-access-log".into()).spawn(move || {
            while let Ok(line) = lines.recv() {
                // Lock stdout only while writing a batch: anything else that prints (a test
                // harness, a panic message) must never wait on the access log.
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                // Write whatever else is queued, then flush once.
                while let Ok(more) = lines.try_recv() {
                    let _ = writeln!(out, "{more}");
                }
                let _ = out.flush();
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer");
        }
        Writer { queue }
    })
}

/// Queue one line; never blocks.
pub fn write(line: String) {
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = writer().queue.try_send(line) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lines dropped because the writer could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}
