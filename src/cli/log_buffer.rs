//! The gateway's log output: lines gathered in memory and written to stderr in batches.
//!
//! A `write` system call for each request's line cost about 3% of the throughput at 32
//! connections in the setup of `benches/load.sh` (the same gateway with and without this
//! buffer, measured in alternating rounds on a 2-core VM). Here an `info` line waits
//! in a buffer for at most [`FLUSH_INTERVAL`], or until [`FLUSH_BYTES`] have gathered, and a
//! `warn` or `error` line goes out at once with everything before it. A normal exit, including
//! Pingora's `std::process::exit` after a graceful shutdown, writes what is left.
//!
//! NOTE: a process that is killed (SIGKILL) or aborts loses the `info` lines of its last
//! [`FLUSH_INTERVAL`].

// `libc::atexit` is the one `unsafe` call, and its `SAFETY:` comment is below.
#![allow(unsafe_code)]

use std::io::{self, Write};
use std::sync::{Condvar, Mutex, MutexGuard, Once};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Maximum time a line waits in the buffer.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Buffer size at which the lines are written without waiting for the interval.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// The process's log buffer in front of stderr.
static STDERR: Batcher<Stderr> = Batcher::new(Stderr);
static START: Once = Once::new();

/// Lines gathered in memory in front of an output.
struct Batcher<W> {
    /// Lines not yet written, in the order they were logged.
    pending: Mutex<Vec<u8>>,
    /// Signals the flush thread that `pending` is no longer empty.
    not_empty: Condvar,
    /// Locked while a batch is written, so that batches reach the output in order.
    output: Mutex<W>,
}

impl<W: Write> Batcher<W> {
    const fn new(output: W) -> Self {
        Batcher { pending: Mutex::new(Vec::new()), not_empty: Condvar::new(), output: Mutex::new(output) }
    }

    /// Appends one formatted event. An urgent one, or a full buffer, is written at once.
    fn append(&self, bytes: &[u8], urgent: bool) {
        let mut pending = lock(&self.pending);
        let was_empty = pending.is_empty();
        pending.extend_from_slice(bytes);
        if urgent || pending.len() >= FLUSH_BYTES {
            self.write_out(pending);
        } else if was_empty {
            self.not_empty.notify_one();
        }
    }

    /// Writes the buffered lines. Another thread may append while the write runs.
    fn flush(&self) {
        let pending = lock(&self.pending);
        if !pending.is_empty() {
            self.write_out(pending);
        }
    }

    fn write_out(&self, mut pending: MutexGuard<'_, Vec<u8>>) {
        let capacity = pending.len();
        let batch = std::mem::replace(&mut *pending, Vec::with_capacity(capacity));
        // Taking the output lock before releasing the buffer keeps batches in order.
        let mut output = lock(&self.output);
        drop(pending);
        // A failed write of the log has nowhere to be reported.
        let _ = output.write_all(&batch);
        let _ = output.flush();
    }

    /// Waits for a line, gives later lines [`FLUSH_INTERVAL`] to join it, and writes them all.
    fn flush_forever(&self) -> ! {
        loop {
            let mut pending = lock(&self.pending);
            while pending.is_empty() {
                pending = self.not_empty.wait(pending).unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            drop(pending);
            std::thread::sleep(FLUSH_INTERVAL);
            self.flush();
        }
    }
}

/// The process's stderr, unbuffered.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        io::stderr().lock().write(bytes)
    }

    /// Writes a whole batch under one lock, so that no `eprintln!` lands inside a line.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::stderr().lock().write_all(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A `MakeWriter` for tracing-subscriber that buffers the log output of the whole process.
pub struct BufferedStderr;

impl BufferedStderr {
    /// Returns the writer, after starting its flush thread and registering the flush at exit on
    /// the first call.
    pub fn start() -> io::Result<Self> {
        let mut started = Ok(());
        START.call_once(|| {
            started = std::thread::Builder::new().name("log flush".into()).spawn(|| STDERR.flush_forever()).map(|_| ());
            // SAFETY: `flush_at_exit` takes no arguments and does not unwind, because it ignores
            // write errors and poisoned locks. It only uses a static that lives until the end.
            unsafe { libc::atexit(flush_at_exit) };
        });
        started.map(|()| BufferedStderr)
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { urgent: false }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        // `Level` orders by verbosity: WARN and ERROR are the least verbose.
        LineWriter { urgent: *meta.level() <= Level::WARN }
    }
}

/// Appends one formatted event to the process's buffer. tracing-subscriber writes each event
/// with one `write_all`.
pub struct LineWriter {
    urgent: bool,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        STDERR.append(bytes, self.urgent);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the buffered lines now, such as before a message printed straight to stderr.
pub fn flush() {
    STDERR.flush();
}

extern "C" fn flush_at_exit() {
    STDERR.flush();
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(batcher: &Batcher<Vec<u8>>) -> String {
        String::from_utf8(lock(&batcher.output).clone()).unwrap()
    }

    #[test]
    fn info_lines_wait_for_flush() {
        let batcher = Batcher::new(Vec::new());
        batcher.append(b"one\n", false);
        batcher.append(b"two\n", false);
        assert_eq!(written(&batcher), "");
        batcher.flush();
        assert_eq!(written(&batcher), "one\ntwo\n");
        assert!(lock(&batcher.pending).is_empty());
    }

    #[test]
    fn warning_writes_earlier_lines_first() {
        let batcher = Batcher::new(Vec::new());
        batcher.append(b"info\n", false);
        batcher.append(b"warn\n", true);
        assert_eq!(written(&batcher), "info\nwarn\n");
        batcher.append(b"later\n", false);
        assert_eq!(written(&batcher), "info\nwarn\n");
    }

    #[test]
    fn full_buffer_written_at_once() {
        let batcher = Batcher::new(Vec::new());
        let line = [b'x'; 1023].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..FLUSH_BYTES / line.len() - 1 {
            batcher.append(&line, false);
        }
        assert_eq!(written(&batcher), "");
        batcher.append(&line, false);
        assert_eq!(written(&batcher).len(), FLUSH_BYTES);
    }

    #[test]
    fn flush_thread_writes_within_interval() {
        let batcher: &'static Batcher<Vec<u8>> = Box::leak(Box::new(Batcher::new(Vec::new())));
        std::thread::spawn(|| batcher.flush_forever());
        batcher.append(b"late\n", false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while written(batcher).is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(written(batcher), "late\n");
    }
}
