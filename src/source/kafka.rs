//! The Kafka source: a consumer-group member reading journal records from topics, one
//! record a message, at least once.
//!
//! Offsets are never stored when a message is read. Each frame's ack carries the offsets
//! read so far; once a frame and every frame before it are delivered by every sink, those
//! offsets are stored, and librdkafka commits stored offsets on its timer, on a rebalance
//! and at close. A crash therefore repeats at most the frames in flight.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::Deserialize;

use crate::ack::Progress;
use crate::kafka::{client_config, KafkaUrl, Outage};
use crate::metrics::Metrics;
use crate::pipeline::{abandon, Feed, Refused, Stop};
use crate::source::lines::{Frame, Origin, Whole, KEPT_PREFIX_BYTES};
use crate::tag::route::Headers;

/// A `[sources.NAME]` table of `type = "kafka"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `HOST:PORT[,HOST:PORT]`.
    pub brokers: String,
    pub topics: Vec<String>,
    /// The consumer group; instances in one group share the partitions.
    pub group: String,
    /// Messages cut into one frame at most.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// Stop once every assigned partition is read to its end, instead of following.
    #[serde(default)]
    pub until_end: bool,
    /// librdkafka properties, passed through (security, SASL, TLS, fetch sizes...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_batch_records() -> usize {
    500
}

impl KafkaConfig {
    /// From `kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]?group=GROUP[&until_end=true][&PROP=V]`.
    pub fn from_url(url: &str) -> Result<KafkaConfig, String> {
        let mut url = KafkaUrl::parse(url)?;
        let group = url.query.remove("group").ok_or("a kafka input needs ?group=GROUP")?;
        let until_end = match url.query.remove("until_end").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("until_end={other}: true or false")),
        };
        let batch_records = match url.query.remove("batch_records") {
            Some(n) => n.parse().map_err(|_| format!("batch_records={n}: not a number"))?,
            None => default_batch_records(),
        };
        Ok(KafkaConfig {
            brokers: url.brokers,
            topics: url.path.split(',').map(str::to_string).collect(),
            group,
            batch_records,
            until_end,
            properties: url.query,
        })
    }

    pub(crate) fn label(&self) -> String {
        format!("kafka://{}/{}", self.brokers, self.topics.join(","))
    }

    pub(crate) fn check(&self) -> io::Result<()> {
        if self.topics.iter().any(String::is_empty) || self.group.is_empty() {
            return Err(io::Error::other("a kafka input needs topics and a group"));
        }
        if self.batch_records == 0 {
            return Err(io::Error::other("batch_records must be at least 1"));
        }
        // librdkafka reports a partition's end without its topic.
        if self.until_end && self.topics.len() > 1 {
            return Err(io::Error::other("until_end reads one topic: run one kubetag a topic"));
        }
        self.consumer(None).map(|_| ())
    }

    fn consumer(&self, metrics: Option<Metrics>) -> io::Result<BaseConsumer<Context>> {
        let defaults = [
            ("group.id", self.group.as_str()),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.commit.interval.ms", "1000"),
            // A new group reads a topic from its start: what was written before the first
            // kubetag started is checked too.
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "100"),
            // What librdkafka fetches ahead is bounded, like every queue of the pipeline.
            ("queued.max.messages.kbytes", "16384"),
            ("enable.partition.eof", if self.until_end { "true" } else { "false" }),
            // librdkafka's statistics carry each partition's consumer lag.
            ("statistics.interval.ms", if metrics.is_some() { "5000" } else { "0" }),
        ];
        let config = client_config(&self.brokers, &defaults, &self.properties);
        let context = Context { outage: Outage::new("consumer"), shared: Arc::default(), metrics };
        config.create_with_context(context).map_err(|e| io::Error::other(e.to_string()))
    }
}

/// The offset of the last message read, by topic and partition: a frame's position.
type Offsets = Arc<BTreeMap<(Arc<str>, i32), i64>>;

/// The consumer's callbacks.
struct Context {
    outage: Outage,
    shared: Arc<Shared>,
    metrics: Option<Metrics>,
}

/// What the callbacks and the checkpoint share with the source.
#[derive(Default)]
struct Shared {
    progress: Arc<Progress<Offsets>>,
    /// The offsets last stored, to skip storing the same again.
    stored: Mutex<Option<Offsets>>,
}

impl Shared {
    /// Stores the offsets after which everything is delivered, if they moved.
    fn store(&self, consumer: &BaseConsumer<Context>) {
        let Some(committed) = self.progress.committed() else { return };
        let mut stored = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        if stored.as_ref().is_some_and(|s| Arc::ptr_eq(s, &committed)) {
            return;
        }
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in committed.iter() {
            let next = Offset::Offset(offset + 1);
            if list.add_partition_offset(topic, *partition, next).is_err() {
                continue;
            }
        }
        // Partitions this member no longer owns are refused; the rest are stored.
        if let Err(e) = consumer.store_offsets(&list) {
            tracing::debug!(error = %e, "kafka: offsets not stored");
        }
        *stored = Some(committed);
    }
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.outage.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.outage.error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(metrics) = &self.metrics else { return };
        for (topic, stats) in &statistics.topics {
            for (&partition, stats) in &stats.partitions {
                // -1 is librdkafka's internal partition; a lag of -1 is not known (or the
                // partition is not assigned here).
                if partition >= 0 {
                    let lag = stats.consumer_lag;
                    metrics.kafka_lag(topic, partition, (lag >= 0).then_some(lag));
                }
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(list) => {
                // What is delivered is stored now, so the next owner repeats only what
                // was in flight here.
                self.shared.store(consumer);
                tracing::info!(partitions = list.count(), "kafka: partitions revoked");
            }
            Rebalance::Assign(list) => {
                tracing::info!(partitions = list.count(), "kafka: partitions assigned");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka: rebalance failed"),
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::debug!(error = %e, "kafka: commit failed, retried later"),
        }
    }
}

/// The consumer's delivered offsets, stored on the pipeline's timer and at the end.
pub(crate) struct OffsetCheckpoint {
    consumer: Arc<BaseConsumer<Context>>,
    current_at: Mutex<Instant>,
}

impl super::Checkpoint for OffsetCheckpoint {
    fn save(&self) -> io::Result<()> {
        let shared = &self.consumer.context().shared;
        shared.store(&self.consumer);
        // Current when nothing is in flight; a failed delivery holds the offsets back and
        // the checkpoint ages.
        if shared.progress.settled() {
            *self.current_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        Ok(())
    }

    fn current_at(&self) -> Instant {
        *self.current_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self) -> io::Result<()> {
        self.save()?;
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(io::Error::other(format!("kafka: committing offsets: {e}"))),
        }
    }
}

/// A running consumer.
pub(crate) struct KafkaSource {
    config: KafkaConfig,
    consumer: Arc<BaseConsumer<Context>>,
    max_record_bytes: usize,
}

/// How long a frame is offered before the partitions are paused.
const OFFER_WAIT: Duration = Duration::from_millis(100);
const POLL_WAIT: Duration = Duration::from_millis(100);
const SEEK_WAIT: Duration = Duration::from_secs(5);

impl KafkaSource {
    pub(crate) fn new(
        config: &KafkaConfig,
        max_record_bytes: usize,
        metrics: Metrics,
    ) -> io::Result<KafkaSource> {
        let consumer = Arc::new(config.consumer(Some(metrics))?);
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(KafkaSource { config: config.clone(), consumer, max_record_bytes })
    }

    pub(crate) fn checkpoint(&self) -> Arc<OffsetCheckpoint> {
        let current_at = Mutex::new(Instant::now());
        Arc::new(OffsetCheckpoint { consumer: self.consumer.clone(), current_at })
    }

    /// Reads until `stop` is asked (or, with `until_end`, until every assigned partition is
    /// read to its end).
    pub(crate) fn run(self, feed: Feed, stop: Stop) -> io::Result<()> {
        let (topics, group) = (&self.config.topics, &self.config.group);
        tracing::info!(?topics, %group, "kafka: consuming");
        let mut reader = Reader::new(self);
        while !stop.requested() && !reader.at_end() {
            let polled = reader.poll(POLL_WAIT);
            if polled != Polled::Idle && !reader.batch.full() {
                continue;
            }
            if !reader.flush(&feed, &stop) {
                break;
            }
            // Once a batch, not once a message: what settled since is stored.
            reader.source.shared().store(&reader.source.consumer);
        }
        if !stop.requested() && !reader.batch.is_empty() {
            reader.flush(&feed, &stop);
        }
        Ok(())
    }

    fn shared(&self) -> &Shared {
        &self.consumer.context().shared
    }
}

#[derive(PartialEq, Eq)]
enum Polled {
    Record,
    Idle,
    Error,
}

/// The reading state of a running source.
struct Reader {
    source: KafkaSource,
    batch: Batch,
    latest: BTreeMap<(Arc<str>, i32), i64>,
    topics: BTreeMap<String, Arc<str>>,
    /// Partitions read to their end, with `until_end`, which reads one topic (checked):
    /// a partition number names one.
    ended: BTreeSet<i32>,
    paused: Option<Instant>,
}

impl Reader {
    fn new(source: KafkaSource) -> Reader {
        let batch = Batch::new(source.config.batch_records);
        let (latest, topics, ended) = (BTreeMap::new(), BTreeMap::new(), BTreeSet::new());
        Reader { source, batch, latest, topics, ended, paused: None }
    }

    fn poll(&mut self, wait: Duration) -> Polled {
        let consumer = self.source.consumer.clone();
        match consumer.poll(wait) {
            None => Polled::Idle,
            Some(Ok(message)) => {
                self.source.consumer.context().outage.ok();
                self.take(&message);
                Polled::Record
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                self.end_of(partition);
                Polled::Idle
            }
            Some(Err(e)) => {
                self.source.consumer.context().outage.error(&e, "consuming");
                Polled::Error
            }
        }
    }

    fn take(&mut self, message: &BorrowedMessage<'_>) {
        let topic = match self.topics.get(message.topic()) {
            Some(topic) => topic.clone(),
            None => {
                let topic: Arc<str> = message.topic().into();
                self.topics.insert(message.topic().to_string(), topic.clone());
                topic
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        self.ended.remove(&partition);
        self.latest.insert((topic.clone(), partition), offset);
        let origin = Origin { topic, partition, offset };
        self.batch.push(message, origin, self.source.max_record_bytes);
    }

    fn end_of(&mut self, partition: i32) {
        // librdkafka names only the partition, which is enough for one topic.
        self.ended.insert(partition);
    }

    /// With `until_end`, whether every assigned partition reported its end and nothing is
    /// left to hand on.
    fn at_end(&self) -> bool {
        if !self.source.config.until_end || !self.batch.is_empty() {
            return false;
        }
        let Ok(assigned) = self.source.consumer.assignment() else { return false };
        let elements = assigned.elements();
        !elements.is_empty() && elements.iter().all(|e| self.ended.contains(&e.partition()))
    }

    /// Hands the batch to the pipeline, pausing the partitions while it is full so the
    /// group keeps this member; false once the pipeline takes no more.
    fn flush(&mut self, feed: &Feed, stop: &Stop) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let position: Offsets = Arc::new(self.latest.clone());
        let ack = self.source.shared().progress.ack(position);
        let mut offer = (self.batch.take(), Some(ack));
        loop {
            match feed.offer(offer.0, offer.1, OFFER_WAIT) {
                Ok(()) => break,
                Err(Refused::Closed) => return false,
                Err(Refused::Busy(frame, ack)) => offer = (frame, ack),
            }
            if stop.requested() {
                abandon(offer.1.as_ref());
                return false;
            }
            self.pause();
            // Serve the group while paused; anything still delivered waits in the batch.
            while self.poll(Duration::ZERO) != Polled::Idle {}
        }
        self.resume();
        true
    }

    fn pause(&mut self) {
        let consumer = &self.source.consumer;
        if let Ok(assigned) = consumer.assignment() {
            // Assignments change under a rebalance: pause whatever is assigned now.
            if let Err(e) = consumer.pause(&assigned) {
                tracing::debug!(error = %e, "kafka: cannot pause partitions");
            }
        }
        if self.paused.is_none() {
            tracing::debug!("kafka: sinks are slow, partitions paused");
            self.paused = Some(Instant::now());
        }
    }

    fn resume(&mut self) {
        let Some(since) = self.paused.take() else { return };
        let consumer = &self.source.consumer;
        let Ok(assigned) = consumer.assignment() else { return };
        if let Err(e) = consumer.resume(&assigned) {
            tracing::warn!(error = %e, "kafka: cannot resume partitions");
        }
        // Pausing drops what librdkafka had fetched ahead; fetching goes on right after
        // the last message read here, neither skipping nor repeating any.
        for element in assigned.elements() {
            let key = (Arc::from(element.topic()), element.partition());
            let Some(&offset) = self.latest.get(&key) else { continue };
            let next = Offset::Offset(offset + 1);
            if let Err(e) = consumer.seek(element.topic(), element.partition(), next, SEEK_WAIT) {
                tracing::warn!(error = %e, "kafka: cannot seek after a pause");
            }
        }
        tracing::debug!(ms = since.elapsed().as_millis() as u64, "kafka: partitions resumed");
    }
}

/// A message's headers. rdkafka panics on a header key that is not UTF-8; such a message
/// keeps its record and loses its headers, with a warning.
fn read_headers(headers: &rdkafka::message::BorrowedHeaders) -> Option<Arc<Headers>> {
    quiet_header_panics();
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let list: Headers =
            headers.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect();
        list
    }));
    match read {
        Ok(list) => Some(Arc::new(list)),
        Err(_) => {
            tracing::warn!("kafka: headers with a key that is not UTF-8 dropped from a message");
            None
        }
    }
}

/// Keeps the panic rdkafka raises on a header key that is not UTF-8, which
/// [`read_headers`] catches, off stderr; every other panic is reported as before.
fn quiet_header_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_headers = info
                .location()
                .is_some_and(|l| l.file().contains("rdkafka") && l.file().ends_with("message.rs"));
            if !in_headers {
                report(info);
            }
        }));
    });
}

/// Messages gathered into one frame.
struct Batch {
    bytes: Vec<u8>,
    records: Vec<Whole>,
    capacity: usize,
}

/// Bytes gathered into one frame at most, whatever the record count.
const BATCH_BYTES: usize = 1 << 20;

impl Batch {
    fn new(capacity: usize) -> Batch {
        Batch { bytes: Vec::new(), records: Vec::new(), capacity }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn full(&self) -> bool {
        self.records.len() >= self.capacity || self.bytes.len() >= BATCH_BYTES
    }

    fn push(&mut self, message: &BorrowedMessage<'_>, origin: Origin, max_record_bytes: usize) {
        let payload = message.payload().unwrap_or_default();
        // A trailing newline is the shipper's framing, not the record's.
        let body = payload.strip_suffix(b"\n").unwrap_or(payload);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        let kept = match body.len() > max_record_bytes {
            true => &body[..body.len().min(KEPT_PREFIX_BYTES)],
            false => body,
        };
        let start = self.bytes.len();
        self.bytes.extend_from_slice(kept);
        // A record pretty-printed over several lines: in valid JSON a raw line break can
        // only sit between tokens, so a space says the same and keeps the record one line.
        if memchr::memchr2(b'\n', b'\r', kept).is_some() {
            for byte in &mut self.bytes[start..] {
                if matches!(*byte, b'\n' | b'\r') {
                    *byte = b' ';
                }
            }
        }
        let headers = message.headers().and_then(read_headers);
        let range = start..self.bytes.len();
        self.records.push(Whole { range, len: body.len() as u64, headers, origin });
    }

    fn take(&mut self) -> Frame {
        let bytes = std::mem::take(&mut self.bytes).into();
        Frame::Records { bytes, records: std::mem::take(&mut self.records) }
    }
}
