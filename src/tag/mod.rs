//! Tagging: the rules, the automaton built from them, and the enrichment of a tagged
//! record into its output line.
//!
//! A record whose message holds none of the automaton's patterns is judged from the field
//! index alone; only the few that hit are decoded, confirmed and enriched.

pub(crate) mod category;
pub(crate) mod component;
mod enrich;
pub(crate) mod header;
pub mod mask;
pub(crate) mod route;
pub(crate) mod rules;
pub(crate) mod ruleset;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::record::json::{self, Field};
use crate::record::{Malformed, Message, Record, Shape};
use category::Category;
use component::Component;
use mask::{MaskScratch, Masker};
use route::Route;
use rules::RuleErrors;
use ruleset::{RuleSet, Scratch};

/// What to do with records no rule tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Drop them (the default): only tagged records are forwarded.
    Drop,
    /// Forward them byte for byte.
    Pass,
}

/// How records are judged: the rules, the field names, the unmatched policy.
pub struct Tagger {
    pub rules: Arc<RuleSet>,
    pub shape: Shape,
    pub unmatched: Unmatched,
    /// Secrets masked in every forwarded line.
    pub mask: Arc<Masker>,
}

/// The tagger in use. A reload builds a whole new one beside it and swaps it in; workers
/// look at the generation before each frame, so every frame is tagged by one rule set.
#[derive(Clone)]
pub struct TaggerSlot(Arc<Slot>);

struct Slot {
    generation: AtomicU64,
    tagger: Mutex<Arc<Tagger>>,
}

impl TaggerSlot {
    pub fn new(tagger: Arc<Tagger>) -> TaggerSlot {
        TaggerSlot(Arc::new(Slot { generation: AtomicU64::new(0), tagger: Mutex::new(tagger) }))
    }

    /// Bumped by every swap.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Tagger> {
        self.0.tagger.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the rules from `dir` (the shipped ones without) and, if they compile, swaps
    /// in a tagger that uses them with the current field shape and unmatched policy.
    /// A broken set is refused whole and the current one stays.
    pub fn reload(&self, dir: Option<&std::path::Path>) -> Result<Arc<RuleSet>, RuleErrors> {
        let rules = Arc::new(RuleSet::load(dir)?);
        let mut slot = self.0.tagger.lock().unwrap_or_else(|e| e.into_inner());
        let (shape, unmatched, mask) = (slot.shape.clone(), slot.unmatched, slot.mask.clone());
        *slot = Arc::new(Tagger { rules: rules.clone(), shape, unmatched, mask });
        // Under the lock, so a worker that sees the new generation finds the new tagger.
        self.0.generation.fetch_add(1, Ordering::AcqRel);
        Ok(rules)
    }
}

/// The verdict on one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Tagged by the rule with this index, primary category given.
    Tagged {
        rule: u32,
        category: Category,
    },
    Unmatched,
    /// Unmatched because journalctl left the message out (`null`, over 4096 bytes).
    Omitted,
    Malformed(Malformed),
}

/// One thread's reusable state for tagging lines.
pub struct Worker {
    tagger: Arc<Tagger>,
    fields: Vec<Field>,
    message: Vec<u8>,
    matches: Scratch,
    /// Whether to describe each forwarded record in `route`.
    routes: bool,
    route: Option<Route>,
    /// Where the last scanned line's object closes.
    close: usize,
    /// The slot generation `tagger` came from.
    generation: u64,
    mask: MaskScratch,
    /// Secrets masked since the last `take_masked`.
    masked: u64,
}

impl Worker {
    pub fn new(tagger: Arc<Tagger>) -> Worker {
        let (fields, message, matches) = (Vec::new(), Vec::new(), Scratch::default());
        let mask = MaskScratch::default();
        let (routes, route, close, generation, masked) = (false, None, 0, 0, 0);
        Worker { tagger, fields, message, matches, routes, route, close, generation, mask, masked }
    }

    /// Takes up the slot's tagger if a reload swapped in a new one since the last look.
    pub(crate) fn refresh(&mut self, slot: &TaggerSlot) {
        let generation = slot.generation();
        if generation != self.generation {
            self.tagger = slot.current();
            self.generation = generation;
        }
    }

    /// The rules the worker tags with now.
    pub(crate) fn rules(&self) -> &RuleSet {
        &self.tagger.rules
    }

    /// A worker that also describes every record it forwards, for sinks that route by it.
    pub(crate) fn with_routes(tagger: Arc<Tagger>) -> Worker {
        Worker { routes: true, ..Worker::new(tagger) }
    }

    /// Judges one line (without its newline) and appends what is forwarded to `out`.
    /// Secrets in it are masked. A line the worker panics on (a bug) adds nothing and is
    /// judged [`Malformed::Internal`]: one record is set aside, the stream goes on.
    pub fn line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Outcome {
        let outcome = guarded(out, |out| self.forward(line, out));
        if outcome == Outcome::Malformed(Malformed::Internal) {
            self.route = None;
        }
        outcome
    }

    fn forward(&mut self, line: &[u8], out: &mut Vec<u8>) -> Outcome {
        let start = out.len();
        let outcome = self.judge(line, out);
        let unmatched = matches!(outcome, Outcome::Unmatched | Outcome::Omitted);
        if unmatched && self.tagger.unmatched == Unmatched::Pass {
            out.extend_from_slice(line);
            out.push(b'\n');
            if self.routes {
                self.route = Some(self.unmatched_route(line));
            }
        }
        if out.len() > start {
            self.masked += self.tagger.mask.mask(out, start, &mut self.mask);
        }
        outcome
    }

    /// How many secrets were masked since the last call.
    pub fn take_masked(&mut self) -> u64 {
        std::mem::take(&mut self.masked)
    }

    /// The facts of the record the last `line` forwarded, if it forwarded one and this
    /// worker describes records.
    pub(crate) fn take_route(&mut self) -> Option<Route> {
        self.route.take()
    }

    fn unmatched_route(&self, line: &[u8]) -> Route {
        let record = Record { line, fields: &self.fields, close: self.close };
        let shape = &self.tagger.shape;
        let component = component::classify(record.first_text(&shape.component).as_deref());
        Route {
            category: "unmatched",
            component: component.name,
            node: record.first_text(&shape.host),
            micros: micros(&record, shape),
            ..Route::default()
        }
    }

    fn judge(&mut self, line: &[u8], out: &mut Vec<u8>) -> Outcome {
        let close = match json::scan_object(line, &mut self.fields) {
            Ok(close) => close,
            Err(reason) => return Outcome::Malformed(reason),
        };
        self.close = close;
        let record = Record { line, fields: &self.fields, close };
        let tagger = &*self.tagger;
        let text = match record.message(&tagger.shape, &mut self.message) {
            Ok(Message::Text(text)) => text,
            Ok(Message::Omitted) => return Outcome::Omitted,
            Err(reason) => return Outcome::Malformed(reason),
        };
        if !tagger.rules.any_pattern(&text) {
            return Outcome::Unmatched;
        }

        let component = component::classify(record.first_text(&tagger.shape.component).as_deref());
        if !tagger.rules.confirm(&text, component.agents, &mut self.matches) {
            return Outcome::Unmatched;
        }
        let hits = &self.matches.hits;
        let tag = build_tag(tagger, &record, &text, &component, hits);
        write_tagged(&record, &tag, out);
        let rule = hits[0];
        let category = tagger.rules.rule(rule).category;
        if self.routes {
            let route = Route {
                rule: Some(rule),
                category: category.id(),
                component: component.name.clone(),
                micros: micros(&record, &tagger.shape),
                ..Route::default()
            };
            self.route = Some(route.with_attributes(&tag.attributes));
        }
        Outcome::Tagged { rule, category }
    }
}

/// Runs `judge` on `out`; if it panics, takes back what it appended and judges the line
/// [`Malformed::Internal`].
fn guarded(out: &mut Vec<u8>, judge: impl FnOnce(&mut Vec<u8>) -> Outcome) -> Outcome {
    let start = out.len();
    let judged = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| judge(&mut *out)));
    judged.unwrap_or_else(|_| {
        out.truncate(start);
        Outcome::Malformed(Malformed::Internal)
    })
}

/// The `kubetag` object added to a tagged record.
#[derive(Serialize)]
pub(crate) struct Tag<'a> {
    category: &'static str,
    categories: Vec<&'static str>,
    rule: &'a str,
    rules: Vec<&'a str>,
    severity: &'static str,
    component: &'a str,
    summary: &'a str,
    cause: &'a [String],
    remediation: &'a [String],
    attributes: enrich::Attributes,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<header::LogHeader>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

fn build_tag<'a>(
    tagger: &'a Tagger,
    record: &Record<'_>,
    text: &[u8],
    component: &'a Component,
    hits: &[u32],
) -> Tag<'a> {
    let primary = tagger.rules.rule(hits[0]);
    let mut categories: Vec<&'static str> = Vec::new();
    for &r in hits {
        let id = tagger.rules.rule(r).category.id();
        if !categories.contains(&id) {
            categories.push(id);
        }
    }

    let message = String::from_utf8_lossy(text);
    let mut log = header::parse(&message);
    let mut attributes = enrich::Attributes::new();
    if let Some(host) = record.first_text(&tagger.shape.host) {
        attributes.insert("k8s.node.name", host);
    }
    enrich::extract(&mut attributes, text, log.as_ref(), &primary.extract);
    if let Some(log) = &mut log {
        log.message.iter_mut().chain(log.fields.iter_mut().map(|(_, v)| v)).for_each(clip);
    }
    attributes.values_mut().for_each(clip);

    Tag {
        category: primary.category.id(),
        categories,
        rule: primary.id.as_str(),
        rules: hits.iter().map(|&r| tagger.rules.rule(r).id.as_str()).collect(),
        severity: primary.severity.name(),
        component: &component.name,
        summary: &primary.summary,
        cause: &primary.cause,
        remediation: &primary.remediation,
        attributes,
        log,
        timestamp: timestamp(record, &tagger.shape),
    }
}

/// The most of a record's text that one value of its tag copies. journalctl prints no
/// value over 4096 bytes without `--all`; past that, a tag repeating a long message (its
/// control characters escaped in six bytes each) could be several times the record.
const MAX_VALUE_BYTES: usize = 4096;

/// Cuts `value` to [`MAX_VALUE_BYTES`] on a character boundary, marking the cut with `…`.
fn clip(value: &mut String) {
    if value.len() > MAX_VALUE_BYTES {
        let end = (0..=MAX_VALUE_BYTES).rev().find(|&i| value.is_char_boundary(i)).unwrap_or(0);
        value.truncate(end);
        value.push('…');
    }
}

/// 10000-01-01T00:00:00Z in microseconds since the epoch.
const MAX_RFC3339_MICROS: u64 = 253_402_300_800_000_000;

/// The record's time in microseconds since the epoch.
fn micros(record: &Record<'_>, shape: &Shape) -> Option<u64> {
    crate::record::shape::micros(&record.first_text(&shape.time)?)
}

/// RFC 3339 from journald's microseconds since the epoch.
fn timestamp(record: &Record<'_>, shape: &Shape) -> Option<String> {
    rfc3339(micros(record, shape)?)
}

/// RFC 3339 from microseconds since the epoch.
pub(crate) fn rfc3339(micros: u64) -> Option<String> {
    // RFC 3339 has four-digit years: a later time is left out rather than misprinted.
    if micros >= MAX_RFC3339_MICROS {
        return None;
    }
    let time = UNIX_EPOCH.checked_add(Duration::from_micros(micros))?;
    Some(humantime::format_rfc3339_micros(time).to_string())
}

/// The original record, every field as it was, with the `kubetag` object added last. Any
/// `kubetag` field already present (a record tagged before) is replaced.
fn write_tagged(record: &Record<'_>, tag: &Tag<'_>, out: &mut Vec<u8>) {
    let line = record.line;
    // Compared decoded, so that `"kubet\u0061g"` is replaced too: else the output would
    // hold two keys that a JSON reader takes for one, and which wins depends on the reader.
    let is_tag = |f: &Field| crate::record::key_is(line, f, "kubetag");
    if record.fields.iter().any(is_tag) {
        out.push(b'{');
        for field in record.fields.iter().filter(|f| !is_tag(f)) {
            out.extend_from_slice(&line[field.span.clone()]);
            out.push(b',');
        }
    } else {
        out.extend_from_slice(&line[..record.close]);
        if !record.fields.is_empty() {
            out.push(b',');
        }
    }
    out.extend_from_slice(b"\"kubetag\":");
    serde_json::to_writer(&mut *out, tag).expect("writing to a Vec cannot fail");
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(unmatched: Unmatched) -> Worker {
        let rules = Arc::new(RuleSet::shipped().expect("shipped rules load"));
        let mask = Arc::new(Masker::new(&mask::MaskConfig::default()).unwrap());
        Worker::new(Arc::new(Tagger { rules, shape: Shape::journald(), unmatched, mask }))
    }

    fn run(worker: &mut Worker, line: &str) -> (Outcome, String) {
        let mut out = Vec::new();
        let outcome = worker.line(line.as_bytes(), &mut out);
        (outcome, String::from_utf8(out).unwrap())
    }

    const PULL: &str = r#"{"_HOSTNAME":"node-1","__REALTIME_TIMESTAMP":"1700000000123456","_SYSTEMD_UNIT":"kubelet.service","MESSAGE":"E1121 08:22:37.585238    8228 kuberuntime_image.go:53] \"Failed to pull image\" err=\"rpc error: code = Unknown desc = Error response from daemon: pull access denied\" image=\"myrepo/myapp:v1.0\""}"#;

    #[test]
    fn a_line_the_worker_panics_on_is_set_aside_and_the_worker_goes_on() {
        let mut out = b"kept\n".to_vec();
        let outcome = guarded(&mut out, |out| {
            out.extend_from_slice(b"half a rec");
            panic!("a bug")
        });
        assert_eq!(outcome, Outcome::Malformed(Malformed::Internal));
        assert_eq!(out, b"kept\n", "what the panic left half written is taken back");

        // A record whose time splits a character six bytes from its end once panicked.
        let mut worker = worker(Unmatched::Drop);
        let odd_time = PULL.replace("1700000000123456", "77ҥ[,,97");
        let (outcome, out) = run(&mut worker, &odd_time);
        assert!(matches!(outcome, Outcome::Tagged { .. }), "{outcome:?}");
        assert!(!out.contains("\"timestamp\""), "{out}");
        assert!(matches!(run(&mut worker, PULL).0, Outcome::Tagged { .. }));
    }

    #[test]
    fn tagged_record_keeps_its_fields_and_gains_a_tag() {
        let (outcome, out) = run(&mut worker(Unmatched::Drop), PULL);
        assert!(matches!(outcome, Outcome::Tagged { .. }), "{outcome:?}");
        assert!(out.starts_with(&PULL[..PULL.len() - 1]), "{out}");
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        let tag = &value["kubetag"];
        assert_eq!(tag["category"], "image_pull");
        assert_eq!(tag["component"], "kubelet");
        assert_eq!(tag["attributes"]["k8s.node.name"], "node-1");
        assert_eq!(tag["attributes"]["container.image.name"], "myrepo/myapp:v1.0");
        assert_eq!(tag["log"]["format"], "klog");
        assert_eq!(tag["log"]["source"], "kuberuntime_image.go:53");
        assert_eq!(tag["timestamp"], "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn a_previous_tag_is_replaced() {
        let line = PULL.replacen('{', r#"{"kubetag":{"category":"old"},"kubetag":2,"#, 1);
        let (_, out) = run(&mut worker(Unmatched::Drop), &line);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["kubetag"]["category"], "image_pull");
        assert_eq!(out.matches("\"kubetag\"").count(), 1);
    }

    #[test]
    fn a_previous_tag_with_an_escaped_key_is_replaced() {
        let cases = [
            ("plain", r#""kubetag""#),
            ("one escape", r#""kubet\u0061g""#),
            ("upper-case hex", r#""\u006Bubetag""#),
            ("every letter", r#""\u006b\u0075\u0062\u0065\u0074\u0061\u0067""#),
        ];
        for (name, key) in cases {
            let line = PULL.replacen('{', &format!(r#"{{{key}:{{"category":"old"}},"#), 1);
            let (_, out) = run(&mut worker(Unmatched::Drop), &line);
            assert!(!out.contains("\"old\""), "{name}: {out}");
            assert_eq!(out.matches("\"kubetag\"").count(), 1, "{name}: {out}");
            let value: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(value["kubetag"]["category"], "image_pull", "{name}");
        }
    }

    #[test]
    fn values_copied_from_a_long_message_are_clipped() {
        let long = "x".repeat(3 * MAX_VALUE_BYTES);
        let line = PULL.replace("myrepo/myapp:v1.0", &format!("myrepo/{long}"));
        let (_, out) = run(&mut worker(Unmatched::Drop), &line);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(value["MESSAGE"].as_str().unwrap().contains(&long), "the record is whole");
        let tag = &value["kubetag"];
        let image = tag["attributes"]["container.image.name"].as_str().unwrap();
        let field = tag["log"]["fields"]["image"].as_str().unwrap();
        for clipped in [image, field] {
            assert_eq!(clipped.len(), MAX_VALUE_BYTES + '…'.len_utf8());
            assert!(clipped.starts_with("myrepo/xxx") && clipped.ends_with('…'));
        }
        let mut accented = "é".repeat(MAX_VALUE_BYTES);
        clip(&mut accented);
        assert_eq!(accented.len(), MAX_VALUE_BYTES + '…'.len_utf8(), "cut between characters");
    }

    #[test]
    fn a_time_past_year_9999_is_left_out() {
        let line = PULL.replace("1700000000123456", "253402300800000000");
        let (_, out) = run(&mut worker(Unmatched::Drop), &line);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(value["kubetag"].get("timestamp").is_none());
    }

    #[test]
    fn unmatched_records_pass_byte_for_byte() {
        let line = r#"{ "MESSAGE" : "Started Kubernetes systemd probe." , "X":[1 , 2] }"#;
        let (outcome, out) = run(&mut worker(Unmatched::Pass), line);
        assert_eq!(outcome, Outcome::Unmatched);
        assert_eq!(out, format!("{line}\n"));
        let (_, out) = run(&mut worker(Unmatched::Drop), line);
        assert_eq!(out, "");
    }

    #[test]
    fn malformed_lines_are_not_forwarded() {
        let mut worker = worker(Unmatched::Pass);
        assert_eq!(
            run(&mut worker, "{\"MESSAGE\":"),
            (Outcome::Malformed(Malformed::Truncated), String::new())
        );
        assert_eq!(run(&mut worker, "{}").0, Outcome::Malformed(Malformed::NoMessage));
    }
}
