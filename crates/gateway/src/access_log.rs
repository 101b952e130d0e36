//! The access log's writer: lines are handed to one background thread through a bounded
//! queue, so a slow terminal or pipe never slows a request. When the queue is full, lines
//! are dropped and counted rather than waited for. The writer writes in batches, every 5 ms
//! at most, so that under load a request costs neither a thread wake-up nor a write.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;

const QUEUE_LINES: usize = 16 * 1024;
/// At most this much is written at once.
const BATCH_BYTES: usize = 256 * 1024;
/// How long the writer lets lines gather between writes.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

struct Writer {
    queue: SyncSender<Vec<u8>>,
}

/// Counted outside the writer, so reading it (for `/metrics`) starts nothing.
static DROPPED: AtomicU64 = AtomicU64::new(0);

fn writer() -> &'static Writer {
    static WRITER: OnceLock<Writer> = OnceLock::new();
    WRITER.get_or_init(|| {
        let (queue, lines) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        let spawned = std::thread::Builder::new().name("gateway-access-log".into()).spawn(move || {
            let mut batch: Vec<u8> = Vec::with_capacity(BATCH_BYTES);
            while let Ok(line) = lines.recv() {
                batch.clear();
                batch.extend_from_slice(&line);
                batch.push(b'\n');
                // Whatever else is queued goes in the same write.
                while batch.len() < BATCH_BYTES {
                    let Ok(more) = lines.try_recv() else { break };
                    batch.extend_from_slice(&more);
                    batch.push(b'\n');
                }
                // Lock stdout only while writing a batch: anything else that prints (a test
                // harness, a panic message) must never wait on the access log.
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&batch);
                let _ = out.flush();
                drop(out);
                // Let lines gather before the next write: a wake-up and a write per request
                // would cost the workers more than the log itself (lines wait at most this).
                std::thread::sleep(GATHER);
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the access log writer");
        }
        Writer { queue }
    })
}

/// Queue one line (without its newline); never blocks.
pub fn write(line: Vec<u8>) {
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = writer().queue.try_send(line) {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lines dropped because the writer could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}
