//! The access log's writer. A request appends its line to one of a few buffers (threads take
//! them in turn, so each worker usually has its own and the lock is uncontended), and one
//! background thread
//! swaps the buffers out and writes them to stdout every few milliseconds. So a request costs
//! neither an allocation, a thread wake-up nor a write, and a slow terminal or pipe never
//! slows a request: past a buffer's bound, lines are dropped and counted rather than waited
//! for. When there is nothing to write the thread parks; the first line after that unparks it.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// Bytes one buffer holds at most while the writer is behind (some 4,000 lines).
const BUFFER_BOUND: usize = 1024 * 1024;
/// A buffer that grew past this in a burst is given back to the allocator once written.
const KEEP_CAPACITY: usize = 256 * 1024;
/// How long the writer lets lines gather between writes.
const GATHER: Duration = Duration::from_millis(5);

struct Writer {
    buffers: Box<[Mutex<Vec<u8>>]>,
    /// The writer thread, to unpark (absent if it could not be started).
    thread: Option<Thread>,
    /// The writer found nothing to write and parks (or is about to).
    parked: AtomicBool,
}

/// Counted outside the writer, so reading it (for `/metrics`) starts nothing.
static DROPPED: AtomicU64 = AtomicU64::new(0);

static WRITER: OnceLock<Writer> = OnceLock::new();

fn writer() -> &'static Writer {
    WRITER.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(4, |n| n.get());
        let buffers = (0..threads.clamp(4, 64)).map(|_| Mutex::new(Vec::new())).collect();
        let spawned = std::thread::Builder::new().name("gateway-access-log".into()).spawn(|| write_forever(writer()));
        let thread = match spawned {
            Ok(handle) => Some(handle.thread().clone()),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the access log writer");
                None
            }
        };
        Writer { buffers, thread, parked: AtomicBool::new(false) }
    })
}

/// Write out what every buffer holds; whether there was anything.
fn drain(writer: &Writer, batch: &mut Vec<u8>) -> bool {
    let mut wrote = false;
    for buffer in &writer.buffers {
        std::mem::swap(batch, &mut buffer.lock().unwrap_or_else(|e| e.into_inner()));
        if !batch.is_empty() {
            // Lock stdout only while writing: anything else that prints (a test harness, a
            // panic message) must never wait on the access log.
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(batch);
            let _ = out.flush();
            batch.clear();
            batch.shrink_to(KEEP_CAPACITY);
            wrote = true;
        }
    }
    wrote
}

/// Write out the lines still buffered (at shutdown: the writer thread is not waited for).
pub fn flush() {
    if let Some(writer) = WRITER.get() {
        drain(writer, &mut Vec::new());
    }
}

fn write_forever(writer: &Writer) {
    let mut batch: Vec<u8> = Vec::new();
    loop {
        if !drain(writer, &mut batch) {
            // A quiet gateway: park until a line comes. Say so first, then look again, so a
            // line appended in between is not left waiting.
            writer.parked.store(true, Ordering::SeqCst);
            if writer.buffers.iter().all(|b| b.lock().unwrap_or_else(|e| e.into_inner()).is_empty()) {
                std::thread::park();
            }
            writer.parked.store(false, Ordering::SeqCst);
            continue;
        }
        // Let lines gather before the next write: a wake-up and a write per request would
        // cost the workers more than the log itself (lines wait at most this).
        std::thread::sleep(GATHER);
    }
}

/// Which buffer this thread appends to: threads take turns.
fn buffer_of_this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static BUFFER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    BUFFER.with(|b| *b)
}

/// Append one line: `line` writes it (without the newline) into the buffer. Never blocks
/// on the output.
pub fn write(line: impl FnOnce(&mut Vec<u8>)) {
    let writer = writer();
    let buffer = &writer.buffers[buffer_of_this_thread() % writer.buffers.len()];
    {
        let mut buffer = buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() >= BUFFER_BOUND {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        line(&mut buffer);
        buffer.push(b'\n');
    }
    if writer.parked.load(Ordering::SeqCst) {
        if let Some(thread) = &writer.thread {
            thread.unpark();
        }
    }
}

/// Lines dropped because the writer could not keep up.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}
