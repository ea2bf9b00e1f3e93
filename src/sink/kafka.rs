//! The Kafka sink: every forwarded record becomes one message, on a topic and under a key
//! made from the record's facts, with its input's headers and a `kubetag-category` header.
//!
//! A batch is acknowledged when the broker has confirmed every message made from it.
//! librdkafka retries within `message.timeout.ms`; a message that still fails for a
//! reason that can pass (the brokers are away) is produced again after a pause, so an
//! outage of any length loses nothing. A full producer queue blocks this thread, which
//! fills the sink's queue and so slows the sources down.

use std::collections::BTreeMap;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use serde::Deserialize;

use super::{Batch, Counters};
use crate::kafka::{client_config, KafkaUrl, Outage};
use crate::pipeline::RateLimit;
use crate::tag::route::{Route, Routed};

/// `[sinks.NAME] type = "kafka"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `HOST:PORT[,HOST:PORT]`.
    pub brokers: String,
    /// The topic, with `{category}`, `{component}`, `{node}`... filled per record.
    pub topic: Template,
    /// The message key, filled the same way.
    #[serde(default = "default_key")]
    pub key: Template,
    /// Once the input has ended or a stop was asked, how long undelivered messages are
    /// waited for before they are given up.
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
    /// librdkafka properties, passed through.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_key() -> Template {
    Template::parse("{node}/{namespace}/{pod}").expect("the default key parses")
}

fn default_flush_timeout_ms() -> u64 {
    30_000
}

impl KafkaSinkConfig {
    /// From `kafka://HOST:PORT[,HOST:PORT]/TOPIC_TEMPLATE[?key=TEMPLATE&PROP=VALUE]`.
    pub fn from_url(url: &str) -> Result<KafkaSinkConfig, String> {
        let mut url = KafkaUrl::parse(url)?;
        let key = match url.query.remove("key") {
            Some(key) => Template::parse(&key)?,
            None => default_key(),
        };
        let flush_timeout_ms = match url.query.remove("flush_timeout_ms") {
            Some(ms) => ms.parse().map_err(|_| format!("flush_timeout_ms={ms}: not a number"))?,
            None => default_flush_timeout_ms(),
        };
        // Braces may arrive percent-encoded from a shell script or a manifest.
        let topic = url.path.replace("%7B", "{").replace("%7D", "}");
        Ok(KafkaSinkConfig {
            brokers: url.brokers,
            topic: Template::parse(&topic)?,
            key,
            flush_timeout_ms,
            properties: url.query,
        })
    }

    pub(crate) fn label(&self) -> String {
        format!("kafka://{}/{}", self.brokers, self.topic.text)
    }

    /// The producer, made before the sink's thread starts so that a bad property stops
    /// the run before anything is read.
    pub(crate) fn producer(&self, counters: Counters) -> io::Result<KafkaProducer> {
        let defaults = [
            // Bounded memory: a full queue pushes back instead of growing.
            ("queue.buffering.max.messages", "20000"),
            ("queue.buffering.max.kbytes", "32768"),
            ("linger.ms", "5"),
            ("enable.idempotence", "false"),
            ("acks", "all"),
        ];
        let config = client_config(&self.brokers, &defaults, &self.properties);
        let (outage, retries) = (Outage::new("producer"), Mutex::default());
        let context = Context { outage, counters, retries, refusals: Refusals::default() };
        let producer =
            config.create_with_context(context).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(KafkaProducer(producer))
    }
}

/// A topic or key with `{field}` placeholders, checked when the configuration is read.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(&'static str),
}

impl TryFrom<String> for Template {
    type Error = String;

    fn try_from(text: String) -> Result<Template, String> {
        Template::parse(&text)
    }
}

impl Template {
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| format!("{text:?}: unclosed {{"))?;
            let name = &rest[open + 1..open + close];
            let field = Route::FIELDS.iter().find(|f| **f == name).ok_or_else(|| {
                format!("{text:?}: unknown field {{{name}}}, known: {:?}", Route::FIELDS)
            })?;
            parts.push(Part::Field(field));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.is_empty() {
            return Err("an empty template".into());
        }
        Ok(Template { text: text.to_string(), parts })
    }

    /// The template filled from `route`; a field the record does not name is left empty.
    fn render(&self, route: &Route, out: &mut String) {
        out.clear();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Field(name) => out.push_str(route.field(name).unwrap_or_default()),
            }
        }
    }

    /// As [`Template::render`], keeping only what a topic name may hold.
    fn render_topic(&self, route: &Route, out: &mut String) {
        self.render(route, out);
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !out.chars().all(valid) {
            *out = out.chars().map(|c| if valid(c) { c } else { '_' }).collect();
        }
        out.truncate(249);
    }
}

/// A sink's producer, ready to run.
pub(crate) struct KafkaProducer(BaseProducer<Context>);

/// Logs the first refused message, then at most one count every ten seconds.
struct Refusals(Mutex<RateLimit>);

impl Default for Refusals {
    fn default() -> Self {
        let summary = |count| tracing::error!(count, "kafka: more messages refused");
        Refusals(Mutex::new(RateLimit::new(summary)))
    }
}

impl Refusals {
    fn allow(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).allow()
    }
}

/// A message waiting to be produced again.
struct Resend {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Option<OwnedHeaders>,
    batch: Box<Batch>,
}

/// The producer's callbacks.
struct Context {
    outage: Outage,
    counters: Counters,
    refusals: Refusals,
    retries: Mutex<Vec<Resend>>,
}

impl Context {
    /// The messages waiting to be produced again.
    fn retries(&self) -> std::sync::MutexGuard<'_, Vec<Resend>> {
        self.retries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ClientContext for Context {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.outage.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.outage.error(&error, reason);
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<Batch>;

    fn delivery(&self, result: &DeliveryResult<'_>, batch: Box<Batch>) {
        let (error, message) = match result {
            Ok(_) => {
                self.outage.ok();
                self.counters.sent(1);
                return;
            }
            Err((error, message)) => (error, message),
        };
        if passing(error) {
            self.outage.error(error, "delivering");
            self.counters.retried();
            let resend = Resend {
                topic: message.topic().to_string(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().unwrap_or_default().to_vec(),
                headers: message.headers().map(|h| h.detach()),
                batch,
            };
            self.retries().push(resend);
        } else {
            if self.refusals.allow() {
                tracing::error!(error = %error, topic = message.topic(), "kafka: message refused");
            }
            self.counters.failed(1);
            batch.fail();
        }
    }
}

/// Whether a delivery error can pass with time: brokers away, leaders moving.
fn passing(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as E;
    matches!(
        error.rdkafka_error_code(),
        Some(
            E::MessageTimedOut
                | E::RequestTimedOut
                | E::BrokerTransportFailure
                | E::AllBrokersDown
                | E::Resolve
                | E::NotLeaderForPartition
                | E::LeaderNotAvailable
                | E::NotEnoughReplicas
                | E::NotEnoughReplicasAfterAppend
                | E::NetworkException
        )
    )
}

/// How long resends wait after a failed delivery, so an outage does not spin.
const RESEND_PAUSE: Duration = Duration::from_secs(1);

/// Produces every batch from the queue until it closes, then waits for the deliveries.
pub(crate) fn run(
    config: KafkaSinkConfig,
    KafkaProducer(producer): KafkaProducer,
    batches: flume::Receiver<Batch>,
) -> io::Result<()> {
    let counters = producer.context().counters.clone();
    let mut sink = Producing { config: &config, producer: &producer, topic: String::new() };
    let mut last_resend = Instant::now();
    loop {
        match batches.recv_timeout(Duration::from_millis(50)) {
            Ok(batch) => sink.batch(&batch),
            Err(flume::RecvTimeoutError::Timeout) => {}
            Err(flume::RecvTimeoutError::Disconnected) => break,
        }
        producer.poll(Duration::ZERO);
        if last_resend.elapsed() >= RESEND_PAUSE {
            sink.resend();
            last_resend = Instant::now();
        }
    }
    sink.drain(Duration::from_millis(config.flush_timeout_ms))?;
    let (sent, failed, retried) = counters.totals();
    tracing::info!(sink = %config.label(), sent, retried, "kafka: producer finished");
    match failed {
        0 => Ok(()),
        failed => Err(io::Error::other(format!(
            "{}: {failed} message(s) refused by the brokers",
            config.label()
        ))),
    }
}

/// The producing side of a running sink.
struct Producing<'a> {
    config: &'a KafkaSinkConfig,
    producer: &'a BaseProducer<Context>,
    topic: String,
}

impl Producing<'_> {
    /// Produces one message a record.
    fn batch(&mut self, batch: &Batch) {
        let mut key = String::new();
        let mut start = 0;
        for routed in &batch.records {
            let Routed { end, route } = routed;
            let payload = &batch.bytes[start..end.saturating_sub(1).max(start)];
            start = *end;
            self.config.topic.render_topic(route, &mut self.topic);
            self.config.key.render(route, &mut key);
            let headers = headers(route);
            let record = BaseRecord::with_opaque_to(&self.topic, Box::new(batch.clone()))
                .payload(payload)
                .key(key.as_bytes())
                .headers(headers);
            self.send(record);
        }
    }

    /// Sends one record, waiting while the producer's queue is full.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8], Box<Batch>>) {
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((error, back)) => {
                    tracing::error!(error = %error, topic = back.topic, "kafka: cannot produce");
                    self.producer.context().counters.failed(1);
                    back.delivery_opaque.fail();
                    return;
                }
            }
        }
    }

    /// Produces again what failed for a passing reason.
    fn resend(&self) {
        let retries = std::mem::take(&mut *self.producer.context().retries());
        for resend in retries {
            let key = resend.key.as_deref().unwrap_or_default();
            let mut record = BaseRecord::with_opaque_to(&resend.topic, resend.batch)
                .payload(&resend.payload[..])
                .key(key);
            if let Some(headers) = resend.headers {
                record = record.headers(headers);
            }
            self.send(record);
        }
    }

    /// Waits up to `timeout` for every delivery; what is left then is failed.
    fn drain(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.resend();
            let _ = self.producer.flush(Duration::from_millis(200));
            let waiting = self.producer.in_flight_count() > 0
                || !self.producer.context().retries().is_empty();
            if !waiting {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        let left = self.producer.in_flight_count();
        let retries = std::mem::take(&mut *self.producer.context().retries());
        let lost = left as usize + retries.len();
        // Those still in the producer are counted as failed by their purge's delivery
        // report when the producer drops; the resends waiting here are counted now.
        self.producer.context().counters.failed(retries.len() as u64);
        for resend in retries {
            resend.batch.fail();
        }
        // Dropping the producer purges what is queued; each purged message's batch fails.
        Err(io::Error::other(format!(
            "{}: {lost} message(s) undelivered at the flush timeout",
            self.config.label()
        )))
    }
}

const CATEGORY_HEADER: &str = "kubetag-category";

/// The input's headers, then `kubetag-category`.
fn headers(route: &Route) -> OwnedHeaders {
    let given = route.headers.as_deref().map_or(&[][..], Vec::as_slice);
    let mut headers = OwnedHeaders::new_with_capacity(given.len() + 1);
    // An input's own kubetag-category would be read first by many consumers: it goes.
    for (key, value) in given.iter().filter(|(key, _)| key != CATEGORY_HEADER) {
        headers = headers.insert(Header { key, value: value.as_deref() });
    }
    headers.insert(Header { key: CATEGORY_HEADER, value: Some(route.category) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates() {
        let route = Route {
            category: "image_pull",
            node: Some("node-1".into()),
            pod: Some("web".into()),
            ..Route::default()
        };
        let mut out = String::new();
        Template::parse("kube-errors.{category}").unwrap().render_topic(&route, &mut out);
        assert_eq!(out, "kube-errors.image_pull");
        Template::parse("{node}/{namespace}/{pod}").unwrap().render(&route, &mut out);
        assert_eq!(out, "node-1//web");
        Template::parse("by-node.{node}:{pod}").unwrap().render_topic(&route, &mut out);
        assert_eq!(out, "by-node.node-1_web");
        assert!(Template::parse("t.{categroy}").unwrap_err().contains("unknown field"));
        assert!(Template::parse("t.{category").is_err());
        assert!(Template::parse("").is_err());
    }
}
