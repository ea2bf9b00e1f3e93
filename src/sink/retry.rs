//! Retrying deliveries to a network sink: exponential backoff, outage logs that are
//! rate-limited, and the bounded drain once the pipeline has closed the sink's queue.

use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

use super::Batch;
use crate::metrics::SinkCounters;

/// The first wait after a failure; each later one doubles, up to the sink's maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Consecutive failed attempts allowed once the queue has closed: the pipeline is
/// finishing and must not wait for a peer that may never come back.
const DRAIN_ATTEMPTS: u32 = 3;

/// A peer's Retry-After is honoured up to this, so a bad header cannot stall the sink for
/// hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// An outage is logged when it starts, then at most this often while it lasts.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How often a wait looks whether the queue has closed, so a drain starts promptly.
const POLL: Duration = Duration::from_millis(50);

/// Why a network sink stopped or refused, naming the sink.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error(
        "{sink}: gave up on {batches} batch(es) ({records} records) after the queue closed: \
         {error}"
    )]
    Undelivered { sink: String, batches: u64, records: u64, error: String },
    #[error(
        "{sink}: refused {batches} batch(es) ({records} records), the last with HTTP {status}"
    )]
    Refused { sink: String, batches: u64, records: u64, status: u16 },
}

impl From<SinkError> for std::io::Error {
    fn from(e: SinkError) -> Self {
        std::io::Error::other(e)
    }
}

/// A sink gave up: the queue has closed and the drain's attempts are spent.
#[derive(Debug)]
pub(crate) struct GaveUp {
    pub(crate) error: String,
}

impl GaveUp {
    /// Fails the batches held and every one left in the queue, and names what was lost.
    pub(crate) fn fail(
        self,
        sink: &str,
        held: &[Batch],
        queue: &flume::Receiver<Batch>,
        counters: &SinkCounters,
    ) -> SinkError {
        let left: Vec<Batch> = queue.drain().collect();
        let all = held.iter().chain(&left);
        let (mut batches, mut records) = (0, 0);
        for batch in all {
            batch.fail();
            batches += 1;
            records += count_records(batch);
        }
        counters.failed(records);
        SinkError::Undelivered { sink: sink.into(), batches, records, error: self.error }
    }
}

pub(crate) fn count_records(batch: &Batch) -> u64 {
    memchr::memchr_iter(b'\n', &batch.bytes).count() as u64
}

/// Backoff and outage state of one sink.
pub(crate) struct Retry {
    sink: String,
    max_backoff: Duration,
    next: Duration,
    outage: Option<Outage>,
    drain_failures: u32,
}

struct Outage {
    since: Instant,
    failures: u64,
    logged: Instant,
}

impl Retry {
    pub(crate) fn new(sink: &str, max_backoff_ms: u64) -> Retry {
        let max_backoff = Duration::from_millis(max_backoff_ms);
        let next = FIRST_BACKOFF.min(max_backoff);
        Retry { sink: sink.into(), max_backoff, next, outage: None, drain_failures: 0 }
    }

    /// Records a failed attempt and waits before the next one: `after` if the peer said
    /// when, else the backoff. Once the queue has closed, a few failures in a row give up.
    pub(crate) fn failed(
        &mut self,
        error: &str,
        after: Option<Duration>,
        queue: &flume::Receiver<Batch>,
    ) -> Result<(), GaveUp> {
        self.log_failure(error);
        let draining = queue.is_disconnected();
        if draining {
            self.drain_failures += 1;
            if self.drain_failures >= DRAIN_ATTEMPTS {
                return Err(GaveUp { error: error.into() });
            }
        }
        wait(self.delay(after, draining), queue);
        Ok(())
    }

    /// The wait before the next attempt; a drain never waits longer than the backoff.
    fn delay(&mut self, after: Option<Duration>, draining: bool) -> Duration {
        let mut delay = after.map_or(self.next, |after| after.min(MAX_RETRY_AFTER));
        if draining {
            delay = delay.min(self.max_backoff);
        }
        self.next = (self.next * 2).min(self.max_backoff);
        delay
    }

    /// The peer took a delivery (or answered it): the outage, if any, is over.
    pub(crate) fn succeeded(&mut self) {
        self.next = FIRST_BACKOFF.min(self.max_backoff);
        self.drain_failures = 0;
        if let Some(outage) = self.outage.take() {
            let down_ms = outage.since.elapsed().as_millis() as u64;
            let (sink, failures) = (&self.sink, outage.failures);
            tracing::info!(sink = %sink, failures, down_ms, "sink delivering again");
        }
    }

    fn log_failure(&mut self, error: &str) {
        let now = Instant::now();
        let sink = &self.sink;
        let Some(outage) = &mut self.outage else {
            tracing::warn!(sink = %sink, error, "sink delivery failed, retrying");
            self.outage = Some(Outage { since: now, failures: 1, logged: now });
            return;
        };
        outage.failures += 1;
        if now.duration_since(outage.logged) >= LOG_EVERY {
            outage.logged = now;
            let (failures, down_secs) = (outage.failures, outage.since.elapsed().as_secs());
            tracing::warn!(
                sink = %sink, error, failures, down_secs,
                "sink still failing, retrying"
            );
        }
    }
}

/// Waits `delay`, cut short when the queue closes so the drain starts at once.
fn wait(delay: Duration, queue: &flume::Receiver<Batch>) {
    let deadline = Instant::now() + delay;
    let closed = queue.is_disconnected();
    loop {
        let now = Instant::now();
        if now >= deadline || (!closed && queue.is_disconnected()) {
            return;
        }
        std::thread::sleep((deadline - now).min(POLL));
    }
}

/// Logs the first of a kind of refusal, then at most one count every ten seconds.
pub(crate) struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    pub(crate) fn new() -> RefusalLog {
        RefusalLog { last: None, suppressed: 0 }
    }

    /// Whether to log this refusal: if so, how many were left unlogged since the last.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Milliseconds and sizes of zero make no sense (a busy loop, a timeout that fires at
/// once), so the configuration refuses them.
pub(crate) fn positive<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + PartialEq + Default,
{
    let value = T::deserialize(deserializer)?;
    if value == T::default() {
        return Err(serde::de::Error::custom("must be greater than 0"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut retry = Retry::new("test", 350);
        let waits: Vec<_> = (0..4).map(|_| retry.delay(None, false)).collect();
        assert_eq!(waits, [100, 200, 350, 350].map(Duration::from_millis));
        retry.succeeded();
        assert_eq!(retry.delay(None, false), FIRST_BACKOFF);
    }

    #[test]
    fn retry_after_is_honoured_but_capped_and_a_drain_never_waits_long() {
        let mut retry = Retry::new("test", 5000);
        let secs = Duration::from_secs;
        assert_eq!(retry.delay(Some(secs(30)), false), secs(30));
        assert_eq!(retry.delay(Some(secs(86_400)), false), MAX_RETRY_AFTER);
        assert_eq!(retry.delay(Some(secs(30)), true), secs(5));
    }

    #[test]
    fn a_closed_queue_gives_up_after_a_few_failures() {
        let mut retry = Retry::new("test", 1);
        let (queue, batches) = flume::bounded::<Batch>(1);
        drop(queue);
        let attempts = (1..10).take_while(|_| retry.failed("down", None, &batches).is_ok());
        assert_eq!(attempts.count() as u32, DRAIN_ATTEMPTS - 1);
    }
}
