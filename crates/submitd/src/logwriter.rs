//! The log's writer: lines go to a thread of their own, which writes
//! them to stderr (the journal under systemd) in batches.
//!
//! Why: with a line or three per message, writing each line with its own
//! `write` on the thread that serves connections cost about 5 % of the
//! daemon's CPU under load (`docs/benchmarks.md`, issue 13's profile), and
//! a journal that stalls would stall those threads. Here a line is
//! formatted into a buffer and handed over; the writer thread takes every
//! line waiting and writes them with one `write` when it can.
//!
//! Nothing is dropped: the hand-over queue is bounded, and when it is full
//! (the journal far behind) the caller waits, as a direct write would.
//! [`flush`] waits until every line handed over is written; the daemon
//! calls it before it exits. A line handed over in the last moment before
//! a SIGKILL can be lost, which a write in progress can be too.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Octets of lines waiting at most; then callers wait.
const WAITING_MAX: usize = 4 << 20;

/// Lines waiting for the writer thread, and how many flushes were asked
/// for and done.
#[derive(Default)]
struct Waiting {
    lines: Vec<u8>,
    flushes_asked: u64,
    flushes_done: u64,
    /// The writer waits on `work` (else it is writing or pausing, and
    /// will look again without being woken).
    writer_waiting: bool,
}

/// How long the writer pauses after a write, so that the lines of a busy
/// moment go out together: one write and no wake-up per line, for log
/// lines at most this much later.
const PAUSE: Duration = Duration::from_millis(2);

/// What the callers and the writer thread share. A caller wakes the writer
/// only when it is waiting: under load the writer writes, pauses and looks
/// again, and lines pile up without a wake-up each (a wake-up per line
/// cost as much as the write it saved).
#[derive(Default)]
struct Shared {
    waiting: Mutex<Waiting>,
    /// The writer waits here for lines.
    work: Condvar,
    /// Callers wait here for room, and for their flush.
    room: Condvar,
    /// Whether the writer thread runs (else lines are written directly).
    alive: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hand_over(&self, line: &[u8]) {
        let mut waiting = self.lock();
        while waiting.lines.len() > WAITING_MAX {
            waiting = self.room.wait(waiting).unwrap_or_else(|p| p.into_inner());
        }
        waiting.lines.extend_from_slice(line);
        let wake = std::mem::take(&mut waiting.writer_waiting);
        drop(waiting);
        if wake {
            self.work.notify_one();
        }
    }
}

static SHARED: OnceLock<Shared> = OnceLock::new();

/// Makes a writer for each event: a buffer handed to the writer thread
/// when the event is formatted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batched;

/// One event's line, handed over on drop.
#[derive(Debug)]
pub(crate) struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        match SHARED.get() {
            Some(shared) if shared.alive.load(std::sync::atomic::Ordering::Acquire) => {
                shared.hand_over(&self.0)
            }
            _ => {
                let _ = std::io::stderr().write_all(&self.0);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Batched {
    type Writer = Line;

    fn make_writer(&'a self) -> Self::Writer {
        Line(Vec::with_capacity(256))
    }
}

/// Starts the writer thread (once); returns the writer for the subscriber.
/// If the thread cannot start, lines are written directly.
pub(crate) fn start() -> Batched {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let shared: &'static Shared = SHARED.get_or_init(Shared::default);
        let started = std::thread::Builder::new()
            .name("log".into())
            .spawn(move || write_lines(shared, std::io::stderr()));
        match started {
            // Lines are handed over only once the writer runs.
            Ok(_) => shared
                .alive
                .store(true, std::sync::atomic::Ordering::Release),
            Err(e) => {
                eprintln!("submitd: cannot start the log thread ({e}); lines are written directly")
            }
        }
    });
    Batched
}

/// The writer thread: takes every line waiting, writes them, and waits
/// for more. Runs for the life of the process.
fn write_lines(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let flushes = {
            let mut waiting = shared.lock();
            while waiting.lines.is_empty() && waiting.flushes_done == waiting.flushes_asked {
                waiting.writer_waiting = true;
                waiting = shared.work.wait(waiting).unwrap_or_else(|p| p.into_inner());
            }
            waiting.writer_waiting = false;
            std::mem::swap(&mut batch, &mut waiting.lines);
            waiting.flushes_asked
        };
        shared.room.notify_all();
        let _ = out.write_all(&batch);
        let _ = out.flush();
        batch.clear();
        let mut waiting = shared.lock();
        waiting.flushes_done = flushes;
        drop(waiting);
        shared.room.notify_all();
        std::thread::sleep(PAUSE);
    }
}

/// Waits (at most a few seconds) until every line handed over so far is
/// written.
pub(crate) fn flush() {
    let Some(shared) = SHARED.get() else {
        return;
    };
    if !shared.alive.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    let mut waiting = shared.lock();
    waiting.flushes_asked += 1;
    let mine = waiting.flushes_asked;
    if std::mem::take(&mut waiting.writer_waiting) {
        shared.work.notify_one();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while waiting.flushes_done < mine {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        waiting = shared
            .room
            .wait_timeout(waiting, left)
            .map(|(w, _)| w)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A writer that records each `write` call, as stderr would see them.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(bytes.to_vec());
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn waiting_lines_are_written_together_and_in_order() {
        let shared: &'static Shared = Box::leak(Box::default());
        for i in 0..100 {
            shared.hand_over(format!("line {i}\n").as_bytes());
        }
        let calls = Calls::default();
        let out = calls.clone();
        std::thread::spawn(move || write_lines(shared, out));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while calls.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let seen = calls.0.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "100 waiting lines, one write");
        let text = String::from_utf8(seen.concat()).unwrap();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }
}
