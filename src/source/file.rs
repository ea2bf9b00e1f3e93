//! A regular file read by the tagging threads themselves, one read at a time and in order.
//!
//! A reader thread beside the workers copies every byte into memory that another core then
//! scans: on two cores that copy, and moving the bytes between the cores' caches, cost a
//! fifth of what tagging does. Here the source hands out numbered turns instead; the worker
//! that takes a turn waits for the turns before it, reads the next block into a buffer of
//! its own and tags it while the bytes are still in its cache. Results keep the turns'
//! order like any other frames.
//!
//! Only for regular files: a read from a pipe or terminal can wait for ever, and a worker
//! waiting on one would hold back every other source. A regular file's read can wait too
//! (a network or FUSE file system), so the source hands out the next turn only once the
//! last one has read: one worker at most is ever held by the file, the others go on with
//! other sources, and a stop reads at most one more turn.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::lines::{Frame, Framer};

/// The file, its framer, and whose turn it is.
pub(crate) struct SharedFile {
    state: Mutex<State>,
    turn: Condvar,
    /// Set once no turn will read anything more: the end, an error, or a turn given up.
    ended: AtomicBool,
}

struct State {
    input: File,
    framer: Framer,
    /// The number of the turn that reads next.
    next: u64,
    error: Option<io::Error>,
}

impl SharedFile {
    pub(crate) fn new(input: File, framer: Framer) -> Arc<SharedFile> {
        let state = State { input, framer, next: 0, error: None };
        Arc::new(SharedFile {
            state: Mutex::new(state),
            turn: Condvar::new(),
            ended: AtomicBool::new(false),
        })
    }

    /// Whether the turns handed out so far reach the end: no more are needed.
    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Waits until turn `number` has read, or the file ended.
    pub(crate) fn wait_read(&self, number: u64) {
        drop(self.wait_for_turn(number + 1));
    }

    /// The state once turn `number` may read (the turns before it have), or the file ended.
    fn wait_for_turn(&self, number: u64) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        while state.next < number && !self.ended() {
            state = self.turn.wait(state).unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state
    }

    /// The read error that ended the file, once.
    pub(crate) fn take_error(&self) -> Option<io::Error> {
        self.lock().error.take()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker that panicked mid-read leaves the framer as it was: still usable.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn end(&self, state: &mut State, error: Option<io::Error>) {
        if error.is_some() {
            state.error = error;
        }
        self.ended.store(true, Ordering::Release);
    }
}

/// The reads one turn makes. Every turn wakes the source, the worker that takes the next
/// turn, the collector and a sink: some five context switches, which on two busy cores
/// preempt the other worker. With turns of one 256 KiB read (the default `read_bytes`)
/// they cost two workers 6% of their throughput; with four, a quarter of that, while the
/// blocks a turn read are still in the L3 cache when it tags them.
const TURN_READS: usize = 4;

/// The right to the next read of a file after the reads of the turns before it.
pub(crate) struct Turn {
    file: Arc<SharedFile>,
    number: u64,
    /// Set once its read is over and the next turn may read.
    finished: bool,
}

impl Turn {
    /// Turn `number` of `file`; turns must be numbered from 0 without a gap.
    pub(crate) fn new(file: &Arc<SharedFile>, number: u64) -> Turn {
        Turn { file: file.clone(), number, finished: false }
    }

    /// Waits for the turns before this one, then reads [`TURN_READS`] times (or to the
    /// end), appending the frames that are complete (at the end of the file, its last line
    /// too). Nothing once the file ended.
    pub(crate) fn read(mut self, out: &mut Vec<Frame>) {
        let file = &*self.file;
        let mut state = file.wait_for_turn(self.number);
        let mut reads = 0;
        while !file.ended() && reads < TURN_READS {
            let State { input, framer, .. } = &mut *state;
            match framer.read(input, out) {
                Ok(0) => {
                    framer.finish(out);
                    file.end(&mut state, None);
                }
                Ok(_) => reads += 1,
                Err(e) => file.end(&mut state, Some(e)),
            }
        }
        state.next = self.number + 1;
        drop(state);
        self.finished = true;
        file.turn.notify_all();
    }
}

impl Drop for Turn {
    /// A turn dropped unread (the pipeline is closing, or its worker panicked mid-read)
    /// ends the file: the turns after it, and the source, would otherwise wait for ever.
    fn drop(&mut self) {
        if !self.finished {
            let file = &*self.file;
            let mut state = file.lock();
            file.end(&mut state, None);
            drop(state);
            file.turn.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn text(frames: &[Frame]) -> String {
        let mut all = String::new();
        for frame in frames {
            match frame {
                Frame::Lines(bytes) => all.push_str(std::str::from_utf8(bytes).unwrap()),
                Frame::Oversize { len, .. } => all.push_str(&format!("<{len} bytes>\n")),
                Frame::Records { .. } => panic!("a file has no whole records"),
            }
        }
        all
    }

    fn file_of(content: &str) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(content.as_bytes()).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        file
    }

    #[test]
    fn turns_taken_out_of_order_read_in_order() {
        // Several turns' worth: each reads 64 KiB.
        let content: String = (0..40_000).map(|i| format!("line {i}\n")).collect();
        let shared = SharedFile::new(file_of(&content), Framer::new(64, 16 * 1024));
        let turns: Vec<Turn> = (0..20).map(|n| Turn::new(&shared, n)).collect();
        // Each turn is read on its own thread, started in reverse: every one but the first
        // must wait for the ones before it.
        let threads: Vec<_> = turns
            .into_iter()
            .rev()
            .map(|turn| {
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    let number = turn.number;
                    turn.read(&mut out);
                    (number, text(&out))
                })
            })
            .collect();
        let mut results: Vec<(u64, String)> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        results.sort();
        assert!(results.iter().filter(|(_, text)| !text.is_empty()).count() > 3);
        let joined: String = results.into_iter().map(|(_, t)| t).collect();
        assert_eq!(joined, content);
        assert!(shared.ended());
    }

    #[test]
    fn the_last_line_and_long_lines_come_out_as_from_a_stream() {
        let content = format!("short\n{}\nlast without newline", "x".repeat(100));
        let shared = SharedFile::new(file_of(&content), Framer::new(50, 8));
        let mut out = Vec::new();
        let mut number = 0;
        while !shared.ended() {
            Turn::new(&shared, number).read(&mut out);
            number += 1;
        }
        assert_eq!(text(&out), "short\n<100 bytes>\nlast without newline");
        assert!(shared.take_error().is_none());
    }

    #[test]
    fn a_read_error_ends_the_file_and_is_kept_for_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "a\n").unwrap();
        // Open for writing only: every read fails.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let shared = SharedFile::new(file, Framer::new(64, 8));
        let mut out = Vec::new();
        Turn::new(&shared, 0).read(&mut out);
        Turn::new(&shared, 1).read(&mut out);
        assert!(out.is_empty());
        assert!(shared.ended());
        assert!(shared.take_error().is_some());
        assert!(shared.take_error().is_none(), "reported once");
    }

    #[test]
    fn a_turn_dropped_unread_ends_the_file_for_those_after_it() {
        let shared = SharedFile::new(file_of("a\nb\n"), Framer::new(64, 1));
        let (first, second) = (Turn::new(&shared, 0), Turn::new(&shared, 1));
        let waiting = std::thread::spawn(move || {
            let mut out = Vec::new();
            second.read(&mut out);
            out.len()
        });
        drop(first);
        assert_eq!(waiting.join().unwrap(), 0);
        assert!(shared.ended());
    }
}
