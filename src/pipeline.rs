//! The pipeline: sources cut frames, workers tag them in parallel, one collector puts the
//! results back in each source's order, counts them and hands them to the sinks.
//!
//! Every queue between the stages is bounded, so memory stays flat whatever the input and
//! a slow sink slows the sources down rather than losing records.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ack::Ack;
use crate::config::Settings;
use crate::dead_letter::{DeadLetter, Reject};
use crate::dedupe::{Dedupe, Lines};
use crate::metrics::{Metrics, SinkCounters};
use crate::record::Malformed;
use crate::sink::{Batch, Output, Sink, SinkConfig};
use crate::source::file::{SharedFile, Turn};
use crate::source::journal::JournalSource;
use crate::source::kafka::KafkaSource;
use crate::source::lines::{lines, Frame, Framer, Whole, KEPT_PREFIX_BYTES};
use crate::source::tcp::TcpSource;
use crate::source::{Checkpoint, Opened, SourceConfig};
use crate::stats::Counts;
use crate::tag::route::Routed;
use crate::tag::ruleset::RuleSet;
use crate::tag::{Outcome, TaggerSlot, Worker};

/// Work on its way to a worker, with where to send the result.
struct Job {
    work: Work,
    ack: Option<Ack>,
    reply: flume::Sender<Done>,
}

/// What a worker is handed.
enum Work {
    /// A frame its source cut.
    Frame(Frame),
    /// The next read of a regular file, which the worker does itself.
    Read(Turn),
}

/// A frame's result, waited for in order.
struct Pending {
    source: usize,
    reply: flume::Receiver<Done>,
}

/// What a worker made of one job, or of a part of it.
#[derive(Default)]
struct Done {
    out: Vec<u8>,
    counts: Counts,
    lines: u64,
    rejects: Vec<Reject>,
    records: Vec<Routed>,
    ack: Option<Ack>,
    /// Whether more parts of the same job follow.
    more: bool,
}

/// How much output one part of a job's result holds, the line that crossed it included.
/// A frame of small records that each become a long tagged line makes tens of times its
/// size in output: sent whole, that would make memory follow the input's shape instead of
/// the pipeline's bounds. A worker waits for the collector to take a part before it sends
/// the next, so a job in flight holds at most two parts.
const PART_BYTES: usize = 256 * 1024;

/// A job's result on its way to the collector, sent in parts of [`PART_BYTES`].
struct Results {
    reply: flume::Sender<Done>,
    ack: Option<Ack>,
    done: Done,
    /// Cleared once no one waits for the result any more (the run is stopping).
    wanted: bool,
}

impl Results {
    fn new(reply: flume::Sender<Done>, ack: Option<Ack>) -> Results {
        Results { reply, ack, done: Done::default(), wanted: true }
    }

    /// Sends what is done so far if it holds a part's worth of output.
    fn part_done(&mut self, rules: &RuleSet) {
        if self.done.out.len() >= PART_BYTES {
            self.send(rules, true);
        }
    }

    /// Sends the last part.
    fn finish(mut self, rules: &RuleSet) {
        self.send(rules, false);
    }

    /// Every part carries the frame's ack: the frame settles once all of them are
    /// delivered, and fails if any one is not.
    fn send(&mut self, rules: &RuleSet, more: bool) {
        let mut done = std::mem::take(&mut self.done);
        done.counts.name_rules(rules);
        done.ack = if more { self.ack.clone() } else { self.ack.take() };
        done.more = more;
        if let Err(flume::SendError(done)) = self.reply.send(done) {
            // Not delivered: its frame must not be checkpointed past.
            abandon(done.ack.as_ref());
            self.wanted = false;
        }
    }
}

/// How a run ended.
pub struct Finished {
    pub counts: Counts,
    /// Problems that make the run a failure (a sink or source that broke).
    pub failures: Vec<String>,
}

/// Tells the pipeline to stop reading and drain what it has.
#[derive(Clone, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Runs the pipeline until every source ends, the last sink closes, or `stop` is asked.
/// Workers take up whatever tagger a reload puts in `tagger`; progress goes to `metrics`.
pub fn run(
    settings: &Settings,
    tagger: TaggerSlot,
    stop: Stop,
    metrics: Metrics,
) -> io::Result<Finished> {
    let threads = settings.threads.max(1);
    let (jobs, job_queue) = flume::bounded::<Job>(threads * 2);
    let (pending, pending_queue) = flume::bounded::<Pending>(threads * 4);

    let routes = settings.sinks.iter().any(SinkConfig::routes) || settings.dedupe.enabled();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let worker = if routes {
                Worker::with_routes(tagger.current())
            } else {
                Worker::new(tagger.current())
            };
            let slot = tagger.clone();
            spawn_worker(i, job_queue.clone(), (worker, slot), settings.max_line_bytes)
        })
        .collect::<io::Result<_>>()?;
    drop(job_queue);

    let mut sinks = Vec::new();
    for (index, config) in settings.sinks.iter().enumerate() {
        sinks.push(Sink::start(config, settings.queue_batches, metrics.sink(index))?);
    }
    let dead_letter = settings.dead_letter.as_ref().map(DeadLetter::open).transpose()?;

    let mut labels = Vec::new();
    let mut readers = Vec::new();
    let mut consumers = Vec::new();
    let mut checkpoints: Vec<Arc<dyn Checkpoint>> = Vec::new();
    let mut streams = Vec::new();
    let order = Arc::new(Mutex::new(()));
    for (index, config) in settings.sources.iter().enumerate() {
        labels.push(config.label());
        let (jobs, pending, order) = (jobs.clone(), pending.clone(), order.clone());
        let feed = Feed { source: index, jobs, pending, order };
        match config {
            SourceConfig::Journal(journal) => {
                let source = JournalSource::new(journal, settings.max_line_bytes)?;
                checkpoints.push(source.checkpoint());
                metrics.checkpoint(&settings.source_names[index], source.checkpoint());
                let thread = std::thread::Builder::new().name("source journal".into());
                let stop = stop.clone();
                readers.push(thread.spawn(move || source.run(feed, stop))?);
            }
            SourceConfig::Kafka(kafka) => {
                let source = KafkaSource::new(kafka, settings.max_line_bytes, metrics.clone())?;
                // Only the pipeline holds the consumer's checkpoint: dropping it at the end
                // closes the consumer, which leaves its group at once.
                checkpoints.push(source.checkpoint());
                let thread = std::thread::Builder::new().name("source kafka".into());
                let stop = stop.clone();
                // Polling returns often: this reader is waited for even after a stop, so
                // the consumer leaves its group cleanly.
                consumers.push(thread.spawn(move || source.run(feed, stop))?);
            }
            SourceConfig::Tcp(tcp) => {
                let source = TcpSource::bind(tcp)?;
                let limits = (settings.max_line_bytes, settings.read_bytes);
                let (thread, stop) =
                    (std::thread::Builder::new().name("source tcp".into()), stop.clone());
                readers.push(thread.spawn(move || source.run(feed, stop, limits))?);
            }
            // Opened by the reader in turn, as `cat` would: opening a FIFO waits for its
            // writer, and a stop must not wait with it.
            _ => streams.push((config.clone(), feed)),
        }
    }
    // Files and stdin are read one after another, as `cat` would.
    if !streams.is_empty() {
        let limits = (settings.max_line_bytes, settings.read_bytes);
        // With a core to spare, a reader thread copies the next block while the workers
        // tag; without one, it would only compete with them.
        // With a single worker, a read that waits would hold back every other source.
        let workers_read = threads >= crate::config::cores() && threads > 1;
        let (thread, stop) =
            (std::thread::Builder::new().name("source streams".into()), stop.clone());
        readers.push(thread.spawn(move || read_streams(streams, limits, workers_read, stop))?);
    }
    drop((jobs, pending));
    let timer = CheckpointTimer::start(&checkpoints, settings.checkpoint_interval)?;

    let mut collector =
        Collector::new(labels, sinks, dead_letter, stop.clone(), settings.shutdown_timeout);
    collector.dedupe = Dedupe::new(&settings.dedupe);
    // Publishing is per batch; without a server to read the totals it is skipped.
    collector.metrics = settings.metrics.address.is_some().then(|| metrics.clone());
    metrics.running(true);
    collector.collect(&pending_queue, &stop);
    if collector.sinks.is_empty() {
        // Nothing more can be delivered (`| head` closed stdout): reading on would only
        // wait on an idle input.
        stop.request();
    }
    metrics.running(false);
    // Results no one will wait for: dropping their places lets a worker that waits to send
    // a part go on (its frame marked undelivered), and with it a source that waits for the
    // workers' queue, which then sees the stop. A source that never ends (an idle stdin)
    // keeps the queue open, so this runs on a thread of its own that the exit ends.
    let abandon = std::thread::Builder::new().name("abandon results".into());
    let _ = abandon.spawn(move || while pending_queue.recv().is_ok() {});
    for consumer in consumers {
        match consumer.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => collector.failures.push(format!("reading input: {e}")),
            Err(_) => collector.failures.push("a kafka source stopped on a bug".into()),
        }
    }
    if stop.requested() {
        // Readers may be blocked in a read that will never return, holding the workers'
        // queue open: neither is waited for; everything they had taken is delivered.
        drop((readers, workers));
    } else {
        for reader in readers {
            match reader.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => collector.failures.push(format!("reading input: {e}")),
                Err(_) => collector.failures.push("a source stopped on a bug".into()),
            }
        }
        for worker in workers {
            let _ = worker.join();
        }
    }
    let mut finished = collector.finish();

    // Every sink has flushed: what they delivered can be checkpointed.
    timer.stop();
    finished.failures.extend(finish_checkpoints(checkpoints, settings.shutdown_timeout));
    Ok(finished)
}

/// Saves every checkpoint a last time and lets go of them (a Kafka consumer commits and
/// leaves its group), waiting at most `wait`: brokers that are away must not hold the
/// exit. Offsets left uncommitted only make a restart repeat records.
fn finish_checkpoints(checkpoints: Vec<Arc<dyn Checkpoint>>, wait: Duration) -> Vec<String> {
    if checkpoints.is_empty() {
        return Vec::new();
    }
    let (done, finished) = flume::bounded(1);
    let thread = std::thread::Builder::new().name("last checkpoints".into()).spawn(move || {
        let failures: Vec<String> = checkpoints
            .iter()
            .filter_map(|c| c.finish().err())
            .map(|e| format!("saving a checkpoint: {e}"))
            .collect();
        drop(checkpoints);
        let _ = done.send(failures);
    });
    if let Err(e) = thread {
        return vec![format!("saving the checkpoints: {e}")];
    }
    match finished.recv_timeout(wait) {
        Ok(failures) => failures,
        Err(_) => vec![format!("checkpoints not saved within {}s", wait.as_secs())],
    }
}

/// Saves checkpoints on a timer, so a quiet journal still records what was delivered.
struct CheckpointTimer {
    done: flume::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl CheckpointTimer {
    fn start(checkpoints: &[Arc<dyn Checkpoint>], every: Duration) -> io::Result<CheckpointTimer> {
        let (done, finished) = flume::bounded::<()>(0);
        if checkpoints.is_empty() {
            return Ok(CheckpointTimer { done, thread: None });
        }
        let checkpoints = checkpoints.to_vec();
        let thread = std::thread::Builder::new().name("checkpoints".into()).spawn(move || {
            while let Err(flume::RecvTimeoutError::Timeout) = finished.recv_timeout(every) {
                for checkpoint in &checkpoints {
                    if let Err(e) = checkpoint.save() {
                        tracing::warn!(error = %e, "cannot save a checkpoint");
                    }
                }
            }
        })?;
        Ok(CheckpointTimer { done, thread: Some(thread) })
    }

    fn stop(self) {
        drop(self.done);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

/// A source's way into the pipeline.
#[derive(Clone)]
pub(crate) struct Feed {
    source: usize,
    jobs: flume::Sender<Job>,
    pending: flume::Sender<Pending>,
    /// Shared by every source and held while a frame's place in the order and its job are
    /// queued, so that the workers take frames in the order the collector waits for them.
    /// A worker that waits for the collector to take a part of its result then always
    /// holds a later frame than one the collector waits for, which another worker has
    /// taken or will take.
    ///
    /// The one exception is a file's turn, whose place is queued only once it has read:
    /// frames queued meanwhile come before it in the order, after it in the queue. Its job
    /// is queued under the lock too, so that it cannot come between another frame's place
    /// and that frame's job; then only the one turn out at a time can wait for the
    /// collector out of order, and with two workers at least (the workers read only then)
    /// the other takes the earlier frames.
    order: Arc<Mutex<()>>,
}

/// Why a frame was not taken.
pub(crate) enum Refused {
    /// The pipeline is full: the frame comes back, to be offered again.
    Busy(Frame, Option<Ack>),
    /// The pipeline takes no more frames.
    Closed,
}

impl Feed {
    /// Queues a frame; false once the pipeline no longer takes any.
    pub(crate) fn send(&self, frame: Frame, ack: Option<Ack>) -> bool {
        let (reply, result) = flume::bounded(1);
        let pending = Pending { source: self.source, reply: result };
        let _order = self.order();
        if self.pending.send(pending).is_err() {
            abandon(ack.as_ref());
            return false;
        }
        self.queue(Job { work: Work::Frame(frame), ack, reply })
    }

    /// Hands turn `number` of `file` to the workers and waits for it to read; false once
    /// the pipeline no longer takes any. Its place in the order is taken only once it has
    /// read: a read that waits (a network or FUSE file system) then holds back one worker
    /// and none of the other sources' results.
    fn send_turn(&self, file: &Arc<SharedFile>, number: u64) -> bool {
        let (reply, result) = flume::bounded(1);
        let job = Job { work: Work::Read(Turn::new(file, number)), ack: None, reply };
        if !self.queue_in_order(job) {
            return false;
        }
        file.wait_read(number);
        // A turn dropped unread (the workers are gone) has no result to wait for.
        if result.is_disconnected() && result.is_empty() {
            return false;
        }
        self.pending.send(Pending { source: self.source, reply: result }).is_ok()
    }

    fn order(&self) -> MutexGuard<'_, ()> {
        self.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a job whose place in the order comes later, under the order lock.
    fn queue_in_order(&self, job: Job) -> bool {
        let _order = self.order();
        self.queue(job)
    }

    /// Hands a job whose place in the order is taken to the workers.
    fn queue(&self, job: Job) -> bool {
        match self.jobs.send(job) {
            Ok(()) => true,
            Err(flume::SendError(job)) => {
                abandon(job.ack.as_ref());
                false
            }
        }
    }

    /// Queues a frame if the pipeline takes it within `wait`, for sources that must keep
    /// serving their peer while the sinks are slow.
    pub(crate) fn offer(
        &self,
        frame: Frame,
        ack: Option<Ack>,
        wait: Duration,
    ) -> Result<(), Refused> {
        let (reply, result) = flume::bounded(1);
        let pending = Pending { source: self.source, reply: result };
        let deadline = Instant::now() + wait;
        let _order = self.order();
        // Workers that wait for the collector stop taking jobs: room in their queue is
        // waited for first, as long as the offer lasts, so that queueing the job once its
        // place is taken cannot wait (every source queues jobs under the lock held here).
        if !self.room_for_a_job(deadline) {
            return Err(Refused::Busy(frame, ack));
        }
        match self.pending.send_deadline(pending, deadline) {
            Ok(()) => {}
            Err(flume::SendTimeoutError::Timeout(_)) => return Err(Refused::Busy(frame, ack)),
            Err(flume::SendTimeoutError::Disconnected(_)) => {
                abandon(ack.as_ref());
                return Err(Refused::Closed);
            }
        }
        match self.queue(Job { work: Work::Frame(frame), ack, reply }) {
            true => Ok(()),
            false => Err(Refused::Closed),
        }
    }

    /// Waits until the workers' queue has room or `deadline` passes; the order lock must
    /// be held, so that no other source takes the room.
    fn room_for_a_job(&self, deadline: Instant) -> bool {
        while self.jobs.is_full() && !self.jobs.is_disconnected() {
            if Instant::now() >= deadline {
                return false;
            }
            // The queue has no way to wait for room without sending; workers free it
            // within a frame's tagging when they can.
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// Marks a frame that will never be tagged or delivered, so that its source does not
/// checkpoint past it when its ack drops (a dropped ack otherwise counts as delivered).
pub(crate) fn abandon(ack: Option<&Ack>) {
    if let Some(ack) = ack {
        ack.fail();
    }
}

/// Opens and reads stream inputs in turn, each framed from its start; regular files are
/// read by the workers themselves when `workers_read`. An error names its input.
fn read_streams(
    streams: Vec<(SourceConfig, Feed)>,
    limits: (usize, usize),
    workers_read: bool,
    stop: Stop,
) -> io::Result<()> {
    for (config, feed) in streams {
        let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", config.label()));
        let input = config.open_stream().map_err(named)?;
        if stop.requested()
            || !read_stream(input, limits, workers_read, &feed, &stop).map_err(named)?
        {
            break;
        }
        tracing::debug!(input = %config.label(), "input read to its end");
    }
    Ok(())
}

/// Reads one opened input to its end; false once the pipeline takes no more or a stop is
/// asked.
fn read_stream(
    input: Opened,
    (max_line_bytes, read_bytes): (usize, usize),
    workers_read: bool,
    feed: &Feed,
    stop: &Stop,
) -> io::Result<bool> {
    let framer = Framer::new(max_line_bytes, read_bytes);
    match input {
        Opened::File(file) if workers_read => hand_out_reads(file, framer, feed, stop),
        Opened::File(file) => read_lines(Box::new(file), framer, feed, stop),
        Opened::Stream(input) => read_lines(input, framer, feed, stop),
    }
}

/// Hands the reads of a regular file to the workers, one turn each, until one of them
/// reaches its end; false once the pipeline takes no more or a stop is asked.
fn hand_out_reads(file: File, framer: Framer, feed: &Feed, stop: &Stop) -> io::Result<bool> {
    let shared = SharedFile::new(file, framer);
    let mut number = 0;
    // One turn out at a time: a read that waits holds one worker, not all of them.
    while !shared.ended() {
        if stop.requested() || !feed.send_turn(&shared, number) {
            return Ok(false);
        }
        number += 1;
    }
    match shared.take_error() {
        Some(e) => Err(e),
        None => Ok(true),
    }
}

/// Reads one input to its end; false once the pipeline takes no more or a stop is asked.
fn read_lines(
    mut input: Box<dyn io::Read + Send>,
    mut framer: Framer,
    feed: &Feed,
    stop: &Stop,
) -> io::Result<bool> {
    let mut frames = Vec::new();
    loop {
        let n = framer.read(&mut *input, &mut frames)?;
        if n == 0 {
            framer.finish(&mut frames);
        }
        for frame in frames.drain(..) {
            if !feed.send(frame, None) {
                return Ok(false);
            }
        }
        if stop.requested() {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn spawn_worker(
    index: usize,
    jobs: flume::Receiver<Job>,
    (mut worker, slot): (Worker, TaggerSlot),
    max_line_bytes: usize,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("tag {index}")).spawn(move || {
        let mut frames = Vec::new();
        while let Ok(job) = jobs.recv() {
            // Between frames: a frame is tagged by one rule set, old or new.
            worker.refresh(&slot);
            let mut results = Results::new(job.reply, job.ack);
            match job.work {
                Work::Frame(frame) => frames.push(frame),
                Work::Read(turn) => turn.read(&mut frames),
            }
            for frame in frames.drain(..) {
                process(&mut worker, frame, max_line_bytes, &mut results);
            }
            results.finish(worker.rules());
        }
    })
}

/// Tags every line of a frame, adding to `results` (nothing once no one wants them).
fn process(worker: &mut Worker, frame: Frame, max_line_bytes: usize, results: &mut Results) {
    match frame {
        Frame::Oversize { prefix, len, taken } => {
            let done = &mut results.done;
            done.counts.bytes += taken;
            reject(done, Malformed::TooLong, prefix, len);
            done.counts.records += 1;
            done.lines += 1;
        }
        Frame::Lines(bytes) => {
            for (line, taken) in lines(&bytes) {
                results.done.counts.bytes += taken;
                one_line(worker, &bytes, line, max_line_bytes, &mut results.done);
                results.part_done(worker.rules());
                if !results.wanted {
                    return;
                }
            }
        }
        Frame::Records { bytes, records } => {
            for whole in records {
                one_record(worker, &bytes, whole, max_line_bytes, &mut results.done);
                results.part_done(worker.rules());
                if !results.wanted {
                    return;
                }
            }
        }
    }
}

/// Tags a record that arrived whole; its headers go on with its output, its origin into
/// any dead-letter envelope.
fn one_record(worker: &mut Worker, bytes: &Bytes, whole: Whole, max: usize, done: &mut Done) {
    let (rejects, records) = (done.rejects.len(), done.records.len());
    done.counts.bytes += whole.len;
    if whole.len > max as u64 {
        reject(done, Malformed::TooLong, bytes.slice(whole.range), whole.len);
        done.counts.records += 1;
        done.lines += 1;
    } else {
        one_line(worker, bytes, whole.range, max, done);
    }
    for reject in &mut done.rejects[rejects..] {
        reject.origin = Some(whole.origin.clone());
    }
    if let Some(routed) = done.records[records..].first_mut() {
        routed.route.headers = whole.headers;
    }
}

fn one_line(
    worker: &mut Worker,
    bytes: &Bytes,
    line: std::ops::Range<usize>,
    max_line_bytes: usize,
    done: &mut Done,
) {
    let len = line.len() as u64;
    let before = done.out.len();
    if line.len() > max_line_bytes {
        let kept = line.start..line.start + line.len().min(KEPT_PREFIX_BYTES);
        reject(done, Malformed::TooLong, bytes.slice(kept), len);
    } else {
        let outcome = worker.line(&bytes[line.clone()], &mut done.out);
        done.counts.masked += worker.take_masked();
        count(outcome, bytes, line, done);
    }
    if done.out.len() > before {
        done.counts.forwarded += 1;
        if let Some(route) = worker.take_route() {
            done.records.push(Routed { end: done.out.len(), route });
        }
    }
    done.counts.records += 1;
    done.lines += 1;
}

fn count(outcome: Outcome, bytes: &Bytes, line: std::ops::Range<usize>, done: &mut Done) {
    match outcome {
        Outcome::Tagged { rule, category } => done.counts.tagged(rule, category),
        Outcome::Unmatched => done.counts.unmatched += 1,
        Outcome::Omitted => {
            done.counts.unmatched += 1;
            done.counts.omitted_messages += 1;
        }
        Outcome::Malformed(reason) => {
            reject(done, reason, bytes.slice(line.clone()), line.len() as u64)
        }
    }
}

fn reject(done: &mut Done, reason: Malformed, raw: Bytes, len: u64) {
    done.counts.malformed(reason);
    done.rejects.push(Reject { offset: done.lines, reason, raw, len, origin: None });
}

/// Whether a sink took a batch.
enum Offer {
    Taken,
    Gone,
}

/// Puts results back in order and hands them on.
struct Collector {
    labels: Vec<String>,
    lines: Vec<u64>,
    sinks: Vec<Sink>,
    /// Sinks whose thread stopped; their errors are reported at the end.
    dead_sinks: Vec<Sink>,
    dead_letter: Option<DeadLetter>,
    counts: Counts,
    failures: Vec<String>,
    logged: RateLimit,
    stop: Stop,
    shutdown_timeout: Duration,
    /// When this collector first saw the stop.
    stopping_since: Option<Instant>,
    dedupe: Option<Dedupe>,
    metrics: Option<Metrics>,
}

impl Collector {
    fn new(
        labels: Vec<String>,
        sinks: Vec<Sink>,
        dead_letter: Option<DeadLetter>,
        stop: Stop,
        shutdown_timeout: Duration,
    ) -> Collector {
        let lines = vec![0; labels.len()];
        let logged = RateLimit::new(|count| tracing::warn!(count, "more malformed lines skipped"));
        let (counts, failures) = (Counts::default(), Vec::new());
        let (dead_sinks, stopping_since) = (Vec::new(), None);
        Collector {
            labels,
            lines,
            sinks,
            dead_sinks,
            dead_letter,
            counts,
            failures,
            logged,
            stop,
            shutdown_timeout,
            stopping_since,
            dedupe: None,
            metrics: None,
        }
    }

    fn collect(&mut self, queue: &flume::Receiver<Pending>, stop: &Stop) {
        loop {
            if !self.summarise(Some(Instant::now())) {
                return;
            }
            let pending = match queue.recv_timeout(Duration::from_millis(100)) {
                Ok(pending) => pending,
                Err(flume::RecvTimeoutError::Timeout) if stop.requested() => {
                    self.stopping_since.get_or_insert_with(Instant::now);
                    break;
                }
                // A sink that stopped while the input is idle (`| head` closed stdout)
                // would otherwise be found only with the next batch.
                Err(flume::RecvTimeoutError::Timeout) if !self.prune() => return,
                Err(flume::RecvTimeoutError::Timeout) => continue,
                Err(flume::RecvTimeoutError::Disconnected) => return,
            };
            if !self.take(pending) {
                return;
            }
        }
        // Stopping: what was already queued is still finished and delivered.
        while let Ok(pending) = queue.try_recv() {
            if !self.take(pending) {
                return;
            }
        }
    }

    /// Handles one result, part by part; false once no sink is left to take output.
    fn take(&mut self, pending: Pending) -> bool {
        loop {
            let Some(done) = self.next_part(&pending) else { return false };
            let more = done.more;
            if !self.handle(pending.source, done) {
                return false;
            }
            if !more {
                return true;
            }
        }
    }

    /// Waits for the next part of a result; `None` if it will not come.
    fn next_part(&mut self, pending: &Pending) -> Option<Done> {
        loop {
            // Waits in slices, so that a stop asked meanwhile sets its deadline here too.
            let slice = Instant::now() + Duration::from_millis(100);
            let deadline = self.shutdown_deadline();
            match pending.reply.recv_deadline(deadline.map_or(slice, |d| d.min(slice))) {
                Ok(done) => return Some(done),
                // A worker still in a read that waits (a file on a stalled network file
                // system) holds nothing delivered: the stop goes on without what it may
                // still read.
                Err(flume::RecvTimeoutError::Timeout)
                    if deadline.is_some_and(|d| Instant::now() >= d) =>
                {
                    tracing::warn!("a result was still awaited at the shutdown deadline");
                    return None;
                }
                Err(flume::RecvTimeoutError::Timeout) => {}
                Err(flume::RecvTimeoutError::Disconnected) => {
                    self.failures.push("a tagging worker stopped".into());
                    return None;
                }
            }
        }
    }

    /// Counts, dead-letters and delivers one part; false once no sink is left.
    fn handle(&mut self, source: usize, mut done: Done) -> bool {
        let base = self.lines[source];
        self.lines[source] += done.lines;
        for reject in &done.rejects {
            self.dead_letter(source, base + reject.offset + 1, reject);
        }
        let mut lines = Lines { bytes: done.out, records: done.records };
        if let Some(dedupe) = &mut self.dedupe {
            // A repeat held back is dropped on purpose: its frame may settle without it.
            dedupe.batch(&mut lines, &mut done.counts, Instant::now());
        }
        self.counts.add(&done.counts);
        if let Some(metrics) = &self.metrics {
            metrics.read(source, &done.counts);
            metrics.totals(&self.counts);
        }
        if lines.bytes.is_empty() {
            // Nothing to deliver: the frame settles as its ack drops here.
            return true;
        }
        self.deliver(Output { bytes: lines.bytes, records: lines.records, ack: done.ack })
    }

    /// Writes the summaries of the dedupe windows closed by `now` (all with `None`); false
    /// once no sink is left. They carry no ack: the records they stand for settled when
    /// they were held back, so a summary never holds a checkpoint back.
    fn summarise(&mut self, now: Option<Instant>) -> bool {
        let Some(dedupe) = &mut self.dedupe else { return true };
        let lines = dedupe.expire(now);
        if lines.bytes.is_empty() {
            return true;
        }
        self.counts.summaries += lines.records.len() as u64;
        if let Some(metrics) = &self.metrics {
            metrics.totals(&self.counts);
        }
        self.deliver(Output { bytes: lines.bytes, records: lines.records, ack: None })
    }

    /// Hands one batch to every sink; false once no sink is left to take output.
    fn deliver(&mut self, output: Output) -> bool {
        let batch: Batch = Arc::new(output);
        let records = crate::sink::count_records(&batch);
        // A sink that stopped taking batches does not deliver this one either.
        for sink in &self.dead_sinks {
            sink.counters.offered(records);
            sink.counters.failed(records);
        }
        let sinks = std::mem::take(&mut self.sinks);
        for sink in sinks {
            match self.offer(&sink, &batch, records) {
                Offer::Taken => self.sinks.push(sink),
                Offer::Gone => {
                    batch.fail();
                    self.bury(sink);
                }
            }
        }
        !self.sinks.is_empty()
    }

    /// Lets go of the sinks that stopped; false once none is left.
    fn prune(&mut self) -> bool {
        let (gone, alive): (Vec<Sink>, Vec<Sink>) =
            std::mem::take(&mut self.sinks).into_iter().partition(|s| s.queue.is_disconnected());
        self.sinks = alive;
        for sink in gone {
            self.bury(sink);
        }
        !self.sinks.is_empty()
    }

    /// Sets aside a sink that takes no more batches; its error is reported at the end.
    fn bury(&mut self, sink: Sink) {
        if sink.is_stdout {
            // Most often a reader that had enough (`| head`): a clean end.
            tracing::info!(sink = %sink.label, "sink takes no more batches");
        } else {
            tracing::warn!(sink = %sink.label, "sink takes no more batches");
        }
        sink.counters.down();
        self.dead_sinks.push(sink);
    }

    /// Queues a batch for one sink, waiting while its queue is full. Once a stop is asked,
    /// a sink that stays full past the shutdown timeout is given up: the batch is marked
    /// undelivered and the sink takes nothing more.
    fn offer(&mut self, sink: &Sink, batch: &Batch, records: u64) -> Offer {
        let mut batch = batch.clone();
        loop {
            match sink.queue.send_timeout(batch, Duration::from_millis(100)) {
                Ok(()) => {
                    sink.counters.offered(records);
                    return Offer::Taken;
                }
                Err(flume::SendTimeoutError::Disconnected(_)) => {
                    sink.counters.offered(records);
                    sink.counters.failed(records);
                    return Offer::Gone;
                }
                Err(flume::SendTimeoutError::Timeout(back)) => batch = back,
            }
            if self.past_shutdown_deadline() {
                // What the sink holds, and this batch, will not be delivered; the end of
                // the run reports it.
                sink.counters.offered(records);
                sink.counters.abandon();
                return Offer::Gone;
            }
        }
    }

    /// When a stopping run gives up on what is left; `None` unless a stop was asked.
    fn shutdown_deadline(&mut self) -> Option<Instant> {
        if !self.stop.requested() {
            return None;
        }
        Some(*self.stopping_since.get_or_insert_with(Instant::now) + self.shutdown_timeout)
    }

    fn past_shutdown_deadline(&mut self) -> bool {
        if !self.stop.requested() {
            return false;
        }
        let since = *self.stopping_since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.shutdown_timeout
    }

    fn dead_letter(&mut self, source: usize, line: u64, reject: &Reject) {
        let label = &self.labels[source];
        if self.logged.allow() {
            let reason = reject.reason.name();
            tracing::warn!(source = %label, line, reason, "malformed line skipped");
        }
        if let Some(dead_letter) = &mut self.dead_letter {
            match dead_letter.write(label, line, reject).and_then(|()| dead_letter.flush()) {
                Ok(()) => self.counts.dead_lettered += 1,
                Err(e) => self.failures.push(format!("writing the dead-letter file: {e}")),
            }
        }
    }

    /// Waits for a sink's thread to end; false if it is to be left behind. A sink drains
    /// for as long as it needs until a stop is asked, before or during the wait. Past the
    /// shutdown deadline, a sink still writing may finish what it holds (one beside a
    /// stalled sink got its last batches late), up to a second timeout (a second at least);
    /// one that makes no progress for a moment is left behind, the records it holds
    /// unacknowledged, so no checkpoint passes them.
    fn drained(&mut self, thread: &JoinHandle<io::Result<()>>, counters: &SinkCounters) -> bool {
        const STALLED: Duration = Duration::from_millis(100);
        let (mut progress, mut since) = (counters.progress(), Instant::now());
        while !thread.is_finished() {
            if counters.progress() != progress {
                (progress, since) = (counters.progress(), Instant::now());
            }
            if self.past_shutdown_deadline() {
                let grace = self.shutdown_timeout.max(Duration::from_secs(1));
                let last_chance = self.stopping_since.map(|at| at + self.shutdown_timeout + grace);
                if since.elapsed() >= STALLED || last_chance.is_some_and(|at| Instant::now() >= at)
                {
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Adds what a sink was handed and did not deliver to the run's counts.
    fn count_undelivered(&mut self, label: &str, counters: &crate::sink::Counters) {
        let (_, failed, _) = counters.totals();
        if failed > 0 {
            *self.counts.undelivered.entry(label.to_string()).or_default() += failed;
        }
    }

    fn finish(mut self) -> Finished {
        self.summarise(None);
        if let Some(metrics) = &self.metrics {
            metrics.totals(&self.counts);
        }
        self.logged.flush();
        if let Some(dead_letter) = &mut self.dead_letter {
            if let Err(e) = dead_letter.flush() {
                self.failures.push(format!("writing the dead-letter file: {e}"));
            }
        }
        // Close every queue first, so the sinks drain at the same time.
        let sinks: Vec<Sink> = self.sinks.drain(..).chain(self.dead_sinks.drain(..)).collect();
        let threads: Vec<_> = sinks
            .into_iter()
            .map(|sink| {
                drop(sink.queue);
                (sink.label, sink.is_stdout, sink.thread, sink.counters)
            })
            .collect();
        for (label, is_stdout, thread, counters) in threads {
            if !self.drained(&thread, &counters) {
                counters.abandon();
            }
            self.count_undelivered(&label, &counters);
            if counters.abandoned() {
                // Full when offered a batch, or still busy, at the shutdown deadline.
                match counters.totals().1 {
                    0 => tracing::warn!(sink = %label, "sink still busy at the shutdown timeout"),
                    lost => self.failures.push(format!(
                        "sink {label}: given up at the shutdown timeout, {lost} record(s) not \
                         known to be delivered"
                    )),
                }
                continue;
            }
            match thread.join() {
                Ok(Ok(())) => {}
                // A closed stdout (`| head`) ends the run quietly.
                Ok(Err(e)) if is_stdout && e.kind() == io::ErrorKind::BrokenPipe => {}
                // Network sinks name themselves in their errors.
                Ok(Err(e)) if e.to_string().contains(&label) => self.failures.push(e.to_string()),
                Ok(Err(e)) => self.failures.push(format!("sink {label}: {e}")),
                Err(_) => self.failures.push(format!("sink {label} stopped")),
            }
        }
        Finished { counts: self.counts, failures: self.failures }
    }
}

/// Logs the first of a kind of event, then at most one summary every ten seconds, which
/// `summary` writes with the count of events left out.
pub(crate) struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
    summary: fn(u64),
}

impl RateLimit {
    const EVERY: Duration = Duration::from_secs(10);

    pub(crate) fn new(summary: fn(u64)) -> RateLimit {
        RateLimit { last: None, suppressed: 0, summary }
    }

    /// Whether this event is to be logged; if not, it is counted for the next summary.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < Self::EVERY => {
                self.suppressed += 1;
                false
            }
            _ => {
                self.flush();
                self.last = Some(now);
                true
            }
        }
    }

    pub(crate) fn flush(&mut self) {
        if self.suppressed > 0 {
            (self.summary)(self.suppressed);
            self.suppressed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ack::Progress;

    fn frame() -> Frame {
        Frame::Lines(Bytes::from_static(b"{}\n"))
    }

    /// A frame the pipeline refuses or drops unanswered is never delivered: its source
    /// must not checkpoint past it.
    #[test]
    fn an_abandoned_frame_holds_the_checkpoint_back() {
        let progress: Arc<Progress> = Arc::new(Progress::default());
        drop(progress.ack("first".into()));

        // The pipeline has closed.
        let (jobs, job_queue) = flume::bounded(1);
        let (pending, pending_queue) = flume::bounded(1);
        drop((job_queue, pending_queue));
        let feed = Feed { source: 0, jobs, pending, order: Arc::default() };
        assert!(!feed.send(frame(), Some(progress.ack("second".into()))));
        let refused = feed.offer(frame(), Some(progress.ack("third".into())), Duration::ZERO);
        assert!(matches!(refused, Err(Refused::Closed)));
        assert_eq!(progress.committed().as_deref(), Some("first"));
        assert!(!progress.settled());

        // A worker's result that no one waits for any more.
        let progress: Arc<Progress> = Arc::new(Progress::default());
        let (jobs, job_queue) = flume::bounded(1);
        let (reply, result) = flume::bounded(1);
        drop(result);
        let ack = Some(progress.ack("only".into()));
        jobs.send(Job { work: Work::Frame(frame()), ack, reply }).unwrap();
        drop(jobs);
        spawn_worker(0, job_queue, worker(), 1 << 20).unwrap().join().unwrap();
        assert_eq!(progress.committed(), None);
    }

    fn worker() -> (Worker, TaggerSlot) {
        let rules = Arc::new(crate::tag::ruleset::RuleSet::shipped().unwrap());
        let tagger = crate::tag::Tagger {
            rules,
            shape: crate::record::Shape::journald(),
            unmatched: crate::tag::Unmatched::Drop,
            mask: Arc::new(crate::tag::mask::Masker::off()),
        };
        let slot = TaggerSlot::new(Arc::new(tagger));
        (Worker::new(slot.current()), slot)
    }

    /// Small records that each become a long tagged line: the frame's result comes in
    /// parts of bounded size, each carrying the frame's ack, the counts adding up.
    #[test]
    fn a_result_much_larger_than_its_frame_comes_in_parts() {
        const RECORDS: usize = 2000;
        let line = b"{\"MESSAGE\":\"PLEG is not healthy\"}\n";
        let frame = Frame::Lines(Bytes::from(line.repeat(RECORDS)));
        let progress: Arc<Progress> = Arc::new(Progress::default());
        let (jobs, job_queue) = flume::bounded(1);
        let (reply, result) = flume::bounded(1);
        let ack = Some(progress.ack("frame".into()));
        jobs.send(Job { work: Work::Frame(frame), ack, reply }).unwrap();
        drop(jobs);
        let worker = spawn_worker(0, job_queue, worker(), 1 << 20).unwrap();

        let mut parts = Vec::new();
        while let Ok(done) = result.recv() {
            assert!(done.out.len() < PART_BYTES + 4096, "{} bytes", done.out.len());
            assert!(done.ack.is_some(), "part {} has no ack", parts.len());
            assert_eq!(done.out.iter().filter(|&&b| b == b'\n').count() as u64, done.lines);
            parts.push((done.lines, done.counts.forwarded, done.more));
            assert!(!progress.settled(), "settled before every part was let go");
        }
        worker.join().unwrap();
        assert!(parts.len() > 2, "{} parts", parts.len());
        let last = parts.pop().unwrap();
        assert!(!last.2 && parts.iter().all(|p| p.2), "only the last part ends the result");
        parts.push(last);
        assert_eq!(parts.iter().map(|p| p.0).sum::<u64>(), RECORDS as u64);
        assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), RECORDS as u64);
        assert!(progress.settled());
    }
}
