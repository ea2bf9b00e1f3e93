//! Acknowledgements: how a source learns that everything derived from one of its frames has
//! been delivered by every sink, so that it may checkpoint past that frame.
//!
//! A frame's [`Ack`] travels with its output to each sink; a sink lets go of it once the
//! output is durable (flushed, delivered). When the last holder lets go, the frame is
//! settled. A frame with no output settles as soon as it is tagged. A failed delivery marks
//! the ack, and a failed frame is never settled as delivered: the checkpoint stops before it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A frame's acknowledgement; clones share it.
#[derive(Clone)]
pub(crate) struct Ack(Arc<Inner>);

struct Inner {
    seq: u64,
    failed: AtomicBool,
    progress: Arc<dyn Settle>,
}

/// Where an ack reports when its last holder lets go.
trait Settle: Send + Sync {
    fn settle(&self, seq: u64, delivered: bool);
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.progress.settle(self.seq, !self.failed.load(Ordering::SeqCst));
    }
}

impl Ack {
    /// Marks the frame's output as not delivered.
    pub(crate) fn fail(&self) {
        self.0.failed.store(true, Ordering::SeqCst);
    }
}

/// A source's frames in order, each with the position to checkpoint once it and every
/// frame before it are settled: a journal cursor, or a Kafka offset per partition.
pub(crate) struct Progress<P = String> {
    state: Mutex<State<P>>,
}

struct State<P> {
    next_seq: u64,
    /// Frames handed out and not yet settled, by sequence, with their positions.
    open: BTreeMap<u64, (P, bool)>,
    /// The position after which everything is delivered.
    committed: Option<P>,
    /// A failed frame holds the checkpoint back for the rest of the run.
    stuck: bool,
}

impl<P> Default for Progress<P> {
    fn default() -> Self {
        let state = State { next_seq: 0, open: BTreeMap::new(), committed: None, stuck: false };
        Progress { state: Mutex::new(state) }
    }
}

impl<P: Clone + Send + 'static> Progress<P> {
    /// Hands out the ack of the next frame, which ends at `position`.
    pub(crate) fn ack(self: &Arc<Self>, position: P) -> Ack {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let seq = state.next_seq;
        state.next_seq += 1;
        state.open.insert(seq, (position, false));
        let progress: Arc<dyn Settle> = self.clone();
        Ack(Arc::new(Inner { seq, failed: AtomicBool::new(false), progress }))
    }

    /// The position after which everything is delivered, if any frame settled yet.
    pub(crate) fn committed(&self) -> Option<P> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).committed.clone()
    }

    /// Whether every frame handed out has settled and none failed.
    pub(crate) fn settled(&self) -> bool {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.open.is_empty() && !state.stuck
    }
}

impl<P: Send> Settle for Progress<P> {
    fn settle(&self, seq: u64, delivered: bool) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !delivered {
            state.stuck = true;
        }
        if let Some(entry) = state.open.get_mut(&seq) {
            entry.1 = true;
        }
        // Commit the settled prefix.
        while !state.stuck {
            let Some(entry) = state.open.first_entry() else { break };
            if !entry.get().1 {
                break;
            }
            let (position, _) = entry.remove();
            state.committed = Some(position);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_a_settled_prefix() {
        let progress: Arc<Progress> = Arc::new(Progress::default());
        let a = progress.ack("a".into());
        let b = progress.ack("b".into());
        let c = progress.ack("c".into());
        drop(b);
        assert_eq!(progress.committed(), None, "a is still open");
        drop(a);
        assert_eq!(progress.committed().as_deref(), Some("b"));
        let c2 = c.clone();
        drop(c);
        assert_eq!(progress.committed().as_deref(), Some("b"), "a clone still holds c");
        drop(c2);
        assert_eq!(progress.committed().as_deref(), Some("c"));
    }

    #[test]
    fn a_failed_frame_holds_the_checkpoint_back() {
        let progress: Arc<Progress> = Arc::new(Progress::default());
        let a = progress.ack("a".into());
        let b = progress.ack("b".into());
        drop(a);
        b.fail();
        drop(b);
        let c = progress.ack("c".into());
        drop(c);
        assert_eq!(progress.committed().as_deref(), Some("a"));
    }
}
