//! What a running kubetag has done, in the Prometheus text format, with the health and
//! readiness answers beside it. Served by [`server`] when `[metrics] address` is set.
//!
//! Stages publish into one shared [`Metrics`] per batch, never per record: the collector
//! its running totals, each sink its delivery counters. Label values are configuration
//! names, categories, rule ids and malformed reasons, so every family stays small.

pub(crate) mod server;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::record::Malformed;
use crate::sink::Batch;
use crate::source::Checkpoint;
use crate::stats::Counts;
use crate::tag::category::Category;

/// The registry, shared by every stage and the HTTP server; clones share it.
#[derive(Clone)]
pub struct Metrics(Arc<Registry>);

struct Registry {
    sources: Vec<SourceCounters>,
    sinks: Vec<(String, Arc<SinkCounters>)>,
    /// The collector's totals as of its last batch.
    totals: Mutex<Counts>,
    checkpoints: Mutex<Vec<(String, Arc<dyn Checkpoint>)>>,
    kafka_lag: Mutex<BTreeMap<(String, i32), i64>>,
    rules: Mutex<RulesState>,
    running: AtomicBool,
}

struct SourceCounters {
    name: String,
    records: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default)]
struct RulesState {
    /// Rules of the set in use; 0 until one is loaded.
    loaded: usize,
    reloads: u64,
    refused: u64,
}

/// One sink's delivery counters, kept by the sink's own thread.
#[derive(Default)]
pub(crate) struct SinkCounters {
    /// Records handed to the sink's queue.
    offered: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    down: AtomicBool,
    /// The run gave up on the sink at the shutdown timeout: it starts no more writes.
    abandoned: AtomicBool,
    /// The sink's queue, weakly: metrics must not keep it open past the run.
    queue: Mutex<Option<flume::WeakSender<Batch>>>,
}

impl SinkCounters {
    /// Records handed to the sink.
    pub(crate) fn offered(&self, records: u64) {
        self.offered.fetch_add(records, Ordering::Relaxed);
    }

    /// Records handed to the sink that it has neither delivered nor given up on yet.
    pub(crate) fn undelivered(&self) -> u64 {
        let (offered, sent, failed) = (load(&self.offered), load(&self.sent), load(&self.failed));
        offered.saturating_sub(sent + failed)
    }

    /// Grows whenever the sink delivers or gives up on a record: still at work.
    pub(crate) fn progress(&self) -> u64 {
        load(&self.sent) + load(&self.failed)
    }

    /// Gives up on the sink: it starts no more writes, and what it has not delivered is
    /// counted failed. A write already under way may still deliver part.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
        self.failed(self.undelivered());
    }

    pub(crate) fn abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    /// Records the sink delivered.
    pub(crate) fn sent(&self, records: u64) {
        self.sent.fetch_add(records, Ordering::Relaxed);
    }

    /// Records the sink gave up on or the peer refused.
    pub(crate) fn failed(&self, records: u64) {
        self.failed.fetch_add(records, Ordering::Relaxed);
    }

    /// One more failed attempt that will be tried again.
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Records sent and failed, and attempts retried, so far.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        (load(&self.sent), load(&self.failed), load(&self.retried))
    }

    /// The sink's thread stopped: it takes nothing more.
    pub(crate) fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn watch_queue(&self, queue: &flume::Sender<Batch>) {
        *lock(&self.queue) = Some(queue.downgrade());
    }

    fn queue_len(&self) -> usize {
        let queue = lock(&self.queue).as_ref().and_then(flume::WeakSender::upgrade);
        queue.map_or(0, |queue| queue.len())
    }
}

/// How one sink family reads its value.
type SinkValue = fn(&SinkCounters) -> u64;

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// A registry for sources and sinks with these configuration names, in pipeline order.
    pub fn new(sources: &[String], sinks: &[String]) -> Metrics {
        let source = |name: &String| SourceCounters {
            name: name.clone(),
            records: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        Metrics(Arc::new(Registry {
            sources: sources.iter().map(source).collect(),
            sinks: sinks.iter().map(|name| (name.clone(), Arc::default())).collect(),
            totals: Mutex::default(),
            checkpoints: Mutex::default(),
            kafka_lag: Mutex::default(),
            rules: Mutex::default(),
            running: AtomicBool::new(false),
        }))
    }

    /// The counters the sink at `index` keeps.
    pub(crate) fn sink(&self, index: usize) -> Arc<SinkCounters> {
        match self.0.sinks.get(index) {
            Some((_, counters)) => counters.clone(),
            // A sink the registry was not told of is counted nowhere.
            None => Arc::default(),
        }
    }

    /// A batch from the source at `index` was read: its records and bytes.
    pub(crate) fn read(&self, index: usize, batch: &Counts) {
        if let Some(source) = self.0.sources.get(index) {
            source.records.fetch_add(batch.records, Ordering::Relaxed);
            source.bytes.fetch_add(batch.bytes, Ordering::Relaxed);
        }
    }

    /// The collector's totals, replacing the last ones.
    pub(crate) fn totals(&self, counts: &Counts) {
        lock(&self.0.totals).clone_from(counts);
    }

    pub(crate) fn checkpoint(&self, source: &str, checkpoint: Arc<dyn Checkpoint>) {
        lock(&self.0.checkpoints).push((source.to_string(), checkpoint));
    }

    /// The Kafka consumer's lag on one partition: the high watermark less the next offset
    /// to read. The Kafka source calls this for each assigned partition when its
    /// statistics arrive; a partition it no longer holds is cleared with `None`.
    pub fn kafka_lag(&self, topic: &str, partition: i32, lag: Option<i64>) {
        let mut lags = lock(&self.0.kafka_lag);
        match lag {
            Some(lag) => lags.insert((topic.to_string(), partition), lag),
            None => lags.remove(&(topic.to_string(), partition)),
        };
    }

    /// A rule set of `rules` rules is in use.
    pub(crate) fn rules_loaded(&self, rules: usize) {
        lock(&self.0.rules).loaded = rules;
    }

    /// A reload on SIGHUP took a new rule set (`true`) or refused a broken one.
    pub(crate) fn reloaded(&self, ok: bool) {
        let mut rules = lock(&self.0.rules);
        if ok {
            rules.reloads += 1;
        } else {
            rules.refused += 1;
        }
    }

    /// The pipeline takes records (`true`) or has begun to stop.
    pub(crate) fn running(&self, running: bool) {
        self.0.running.store(running, Ordering::SeqCst);
    }

    /// Ready: the pipeline runs, rules are loaded and no sink has stopped. Else why not.
    pub(crate) fn ready(&self) -> Result<(), String> {
        if lock(&self.0.rules).loaded == 0 {
            return Err("no rules loaded".into());
        }
        if !self.0.running.load(Ordering::SeqCst) {
            return Err("pipeline not running".into());
        }
        match self.0.sinks.iter().find(|(_, sink)| sink.down.load(Ordering::SeqCst)) {
            Some((name, _)) => Err(format!("sink {name} stopped")),
            None => Ok(()),
        }
    }

    /// Every family in the Prometheus text exposition format, version 0.0.4.
    pub(crate) fn render(&self) -> String {
        let mut text = Text::default();
        self.render_sources(&mut text);
        let totals = lock(&self.0.totals).clone();
        render_counts(&totals, &mut text);
        self.render_sinks(&mut text);
        self.render_checkpoints(&mut text);
        self.render_kafka(&mut text);
        self.render_rules(&mut text);
        text.0
    }

    fn render_sources(&self, text: &mut Text) {
        let sources = &self.0.sources;
        text.family("kubetag_records_read_total", "counter", "Records read, by source.");
        for source in sources {
            text.sample(
                "kubetag_records_read_total",
                &[("source", &source.name)],
                load(&source.records),
            );
        }
        text.family("kubetag_bytes_read_total", "counter", "Bytes read, by source.");
        for source in sources {
            text.sample(
                "kubetag_bytes_read_total",
                &[("source", &source.name)],
                load(&source.bytes),
            );
        }
    }

    fn render_sinks(&self, text: &mut Text) {
        let families: [(&str, &str, SinkValue); 5] = [
            ("kubetag_sink_records_sent_total", "Records a sink delivered.", |s| {
                s.sent.load(Ordering::Relaxed)
            }),
            ("kubetag_sink_records_failed_total", "Records a sink gave up on.", |s| {
                s.failed.load(Ordering::Relaxed)
            }),
            ("kubetag_sink_retries_total", "Failed deliveries tried again.", |s| {
                s.retried.load(Ordering::Relaxed)
            }),
            ("kubetag_sink_queue_batches", "Batches waiting in a sink's queue.", |s| {
                s.queue_len() as u64
            }),
            ("kubetag_sink_up", "1 while a sink takes batches, 0 once it stopped.", |s| {
                u64::from(!s.down.load(Ordering::SeqCst))
            }),
        ];
        for (name, help, value) in families {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            text.family(name, kind, help);
            for (sink, counters) in &self.0.sinks {
                text.sample(name, &[("sink", sink)], value(counters));
            }
        }
    }

    fn render_checkpoints(&self, text: &mut Text) {
        let name = "kubetag_journal_checkpoint_age_seconds";
        text.family(
            name,
            "gauge",
            "Seconds since the journal state file last held all that was delivered.",
        );
        let now = Instant::now();
        for (source, checkpoint) in lock(&self.0.checkpoints).iter() {
            let age = now.saturating_duration_since(checkpoint.current_at()).as_secs_f64();
            text.sample(name, &[("source", source)], format!("{age:.3}"));
        }
    }

    fn render_kafka(&self, text: &mut Text) {
        let name = "kubetag_kafka_consumer_lag";
        text.family(name, "gauge", "Messages behind the high watermark, by partition.");
        for ((topic, partition), lag) in lock(&self.0.kafka_lag).iter() {
            let partition = partition.to_string();
            text.sample(name, &[("topic", topic), ("partition", &partition)], lag);
        }
    }

    fn render_rules(&self, text: &mut Text) {
        let rules = lock(&self.0.rules);
        text.family("kubetag_rules_loaded", "gauge", "Rules in the set in use.");
        text.sample("kubetag_rules_loaded", &[], rules.loaded);
        text.family("kubetag_rules_reloads_total", "counter", "Reloads on SIGHUP, by result.");
        text.sample("kubetag_rules_reloads_total", &[("result", "ok")], rules.reloads);
        text.sample("kubetag_rules_reloads_total", &[("result", "refused")], rules.refused);
        text.family("kubetag_ready", "gauge", "1 while /readyz answers 200.");
        drop(rules);
        text.sample("kubetag_ready", &[], u64::from(self.ready().is_ok()));
    }
}

/// The collector's counters, and the node-problem-detector family derived from them.
fn render_counts(counts: &Counts, text: &mut Text) {
    let plain: [(&str, &str, u64); 5] = [
        ("kubetag_records_unmatched_total", "Records no rule tagged.", counts.unmatched),
        (
            "kubetag_records_dead_lettered_total",
            "Lines written to the dead-letter file.",
            counts.dead_lettered,
        ),
        ("kubetag_records_forwarded_total", "Records handed to the sinks.", counts.forwarded),
        (
            "kubetag_records_deduplicated_total",
            "Repeats the dedupe stage held back.",
            counts.deduplicated,
        ),
        ("kubetag_summaries_total", "Summary records the dedupe stage wrote.", counts.summaries),
    ];
    for (name, help, value) in plain {
        text.family(name, "counter", help);
        text.sample(name, &[], value);
    }

    let name = "kubetag_records_tagged_total";
    text.family(name, "counter", "Records tagged, by primary category.");
    for category in Category::all() {
        text.sample(name, &[("category", category.id())], counts.by_category[category.index()]);
    }
    let name = "kubetag_records_malformed_total";
    text.family(name, "counter", "Lines that are not a usable record, by reason.");
    for reason in Malformed::ALL {
        text.sample(name, &[("reason", reason.name())], counts.malformed[reason.index()]);
    }
    let name = "kubetag_rule_matches_total";
    text.family(name, "counter", "Records tagged, by primary rule.");
    for (rule, n) in &counts.by_rule {
        text.sample(name, &[("rule", rule.as_str())], n);
    }

    // node-problem-detector's own name and label, so its users' alerts and dashboards
    // read kubetag's counts unchanged.
    text.family("problem_counter", "counter", "Problems seen, by reason (one reason per rule).");
    for (rule, n) in &counts.by_rule {
        text.sample("problem_counter", &[("reason", &rule.reason())], n);
    }
}

/// The exposition text being written.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, label)) in labels.iter().enumerate() {
                let comma = if i == 0 { "" } else { "," };
                let _ = write!(self.0, "{comma}{key}=\"{}\"", escape(label));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_and_type_and_labels_are_escaped() {
        let metrics = Metrics::new(&["a\"b".into()], &["out".into()]);
        let batch = Counts { records: 3, bytes: 30, ..Counts::default() };
        metrics.read(0, &batch);
        let text = metrics.render();
        assert!(text.contains("kubetag_records_read_total{source=\"a\\\"b\"} 3\n"), "{text}");
        assert!(text.contains("kubetag_sink_up{sink=\"out\"} 1\n"), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} has no TYPE");
        }
    }

    #[test]
    fn ready_needs_rules_a_running_pipeline_and_live_sinks() {
        let metrics = Metrics::new(&[], &["out".into()]);
        assert_eq!(metrics.ready(), Err("no rules loaded".into()));
        metrics.rules_loaded(5);
        assert_eq!(metrics.ready(), Err("pipeline not running".into()));
        metrics.running(true);
        assert_eq!(metrics.ready(), Ok(()));
        metrics.sink(0).down();
        assert_eq!(metrics.ready(), Err("sink out stopped".into()));
    }

    #[test]
    fn kafka_lag_is_set_and_cleared_per_partition() {
        let metrics = Metrics::new(&[], &[]);
        metrics.kafka_lag("node-logs", 0, Some(12));
        metrics.kafka_lag("node-logs", 1, Some(0));
        metrics.kafka_lag("node-logs", 1, None);
        let text = metrics.render();
        assert!(text.contains("kubetag_kafka_consumer_lag{topic=\"node-logs\",partition=\"0\"} 12"));
        assert!(!text.contains("partition=\"1\""), "{text}");
    }
}
