//! Reads the inputs through the pipeline's own framing and tagging code, on as many worker
//! threads as the pipeline uses, and folds what they find into one [`Aggregate`].
//!
//! Frames are handed back in input order, so which values are kept and which message is the
//! example does not depend on the number of threads. Every queue is bounded.

use std::io::{self, Read};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::aggregate::{Aggregate, Event, Object};
use super::progress::Progress;
use crate::record::{Malformed, Shape};
use crate::source::lines::{Frame, Framer};
use crate::tag::category::Category;
use crate::tag::{Outcome, Tagger, Worker};

/// One input to read, in the order given.
pub(crate) struct Input {
    pub(crate) label: String,
    pub(crate) reader: Box<dyn Read + Send>,
}

/// How lines are cut and how many threads tag them.
pub(crate) struct Limits {
    pub(crate) max_line_bytes: usize,
    pub(crate) read_bytes: usize,
    pub(crate) threads: usize,
}

/// What a worker made of one frame.
#[derive(Default)]
struct Found {
    records: u64,
    bytes: u64,
    unmatched: u64,
    omitted_messages: u64,
    malformed: Vec<Malformed>,
    tagged: Vec<(Category, Event)>,
}

struct Job {
    frame: Frame,
    reply: flume::Sender<Found>,
}

/// Reads every input to its end. An input that fails to read ends the scan with its error.
pub(crate) fn scan(
    inputs: Vec<Input>,
    tagger: Arc<Tagger>,
    limits: &Limits,
    progress: &mut Progress,
) -> io::Result<Aggregate> {
    let threads = limits.threads.max(1);
    let (jobs, job_queue) = flume::bounded::<Job>(threads * 2);
    let (pending, pending_queue) = flume::bounded::<flume::Receiver<Found>>(threads * 4);
    let workers = (0..threads)
        .map(|i| spawn_worker(i, job_queue.clone(), tagger.clone(), limits.max_line_bytes))
        .collect::<io::Result<Vec<_>>>()?;
    drop(job_queue);
    let reader = spawn_reader(inputs, limits, jobs, pending)?;

    let mut aggregate = Aggregate::default();
    for reply in pending_queue.iter() {
        // A worker that is gone leaves its frame uncounted; the reader's result says why.
        if let Ok(found) = reply.recv() {
            progress.advance(found.bytes, found.records);
            fold(&mut aggregate, found);
        }
    }
    progress.finish();
    let read = reader.join().unwrap_or_else(|_| Err(stopped("reader")));
    for worker in workers {
        worker.join().map_err(|_| stopped("tagging worker"))?;
    }
    read.map(|()| aggregate)
}

fn stopped(what: &str) -> io::Error {
    io::Error::other(format!("the {what} thread stopped"))
}

fn fold(aggregate: &mut Aggregate, found: Found) {
    aggregate.records += found.records;
    aggregate.bytes += found.bytes;
    aggregate.unmatched += found.unmatched;
    aggregate.omitted_messages += found.omitted_messages;
    for reason in found.malformed {
        aggregate.malformed[reason.index()] += 1;
    }
    for (category, event) in found.tagged {
        aggregate.tagged(category, event);
    }
}

fn spawn_reader(
    inputs: Vec<Input>,
    limits: &Limits,
    jobs: flume::Sender<Job>,
    pending: flume::Sender<flume::Receiver<Found>>,
) -> io::Result<JoinHandle<io::Result<()>>> {
    let (max_line_bytes, read_bytes) = (limits.max_line_bytes, limits.read_bytes);
    std::thread::Builder::new().name("report reader".into()).spawn(move || {
        for mut input in inputs {
            let mut framer = Framer::new(max_line_bytes, read_bytes);
            read_input(&mut framer, &mut *input.reader, &jobs, &pending)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", input.label)))?;
        }
        Ok(())
    })
}

/// Frames one input and queues the frames; the reply slot is queued first so the collector
/// waits for frames in the order they were cut.
fn read_input(
    framer: &mut Framer,
    reader: &mut dyn Read,
    jobs: &flume::Sender<Job>,
    pending: &flume::Sender<flume::Receiver<Found>>,
) -> io::Result<()> {
    let mut frames = Vec::new();
    loop {
        let n = framer.read(reader, &mut frames)?;
        if n == 0 {
            framer.finish(&mut frames);
        }
        for frame in frames.drain(..) {
            let (reply, result) = flume::bounded(1);
            if pending.send(result).is_err() || jobs.send(Job { frame, reply }).is_err() {
                return Ok(());
            }
        }
        if n == 0 {
            return Ok(());
        }
    }
}

fn spawn_worker(
    index: usize,
    jobs: flume::Receiver<Job>,
    tagger: Arc<Tagger>,
    max_line_bytes: usize,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(format!("report tag {index}")).spawn(move || {
        let mut lines = Lines::new(tagger, max_line_bytes);
        while let Ok(job) = jobs.recv() {
            let _ = job.reply.send(lines.frame(job.frame));
        }
    })
}

/// One worker's tagging state.
struct Lines {
    worker: Worker,
    shape: Shape,
    max_line_bytes: usize,
    out: Vec<u8>,
}

impl Lines {
    fn new(tagger: Arc<Tagger>, max_line_bytes: usize) -> Lines {
        Lines {
            shape: tagger.shape.clone(),
            worker: Worker::new(tagger),
            max_line_bytes,
            out: Vec::new(),
        }
    }

    /// Splits a frame into lines as the pipeline does: newline-terminated, a CR before the
    /// newline dropped, a line over the limit refused without being looked at.
    fn frame(&mut self, frame: Frame) -> Found {
        let mut found = Found::default();
        let bytes: Bytes = match frame {
            Frame::Oversize { taken, .. } => {
                found.records = 1;
                found.bytes = taken;
                found.malformed.push(Malformed::TooLong);
                return found;
            }
            Frame::Lines(bytes) => bytes,
            // The report reads files and the journal, which come in lines.
            Frame::Records { .. } => unreachable!("the report reads no whole records"),
        };
        for (line, taken) in crate::source::lines::lines(&bytes) {
            found.bytes += taken;
            self.line(&bytes[line], &mut found);
        }
        found
    }

    fn line(&mut self, line: &[u8], found: &mut Found) {
        found.records += 1;
        if line.len() > self.max_line_bytes {
            found.malformed.push(Malformed::TooLong);
            return;
        }
        self.out.clear();
        match self.worker.line(line, &mut self.out) {
            Outcome::Tagged { rule, category } => {
                found.tagged.push((category, event(&self.out, rule, &self.shape)));
            }
            Outcome::Unmatched => found.unmatched += 1,
            Outcome::Omitted => {
                found.unmatched += 1;
                found.omitted_messages += 1;
            }
            Outcome::Malformed(reason) => found.malformed.push(reason),
        }
    }
}

/// The parts of the `kubetag` object a report reads.
#[derive(Deserialize)]
struct TagView {
    component: String,
    #[serde(default)]
    attributes: Map<String, Value>,
}

/// The event of a tagged output line. The line is the tagger's own JSON; if it could not be
/// read back, the record still counts, with nothing known of it but its rule.
fn event(out: &[u8], rule: u32, shape: &Shape) -> Event {
    let mut event = Event { rule, ..Event::default() };
    let Ok(mut record) = serde_json::from_slice::<Map<String, Value>>(out) else {
        return event;
    };
    event.micros = first(&record, &shape.time).and_then(micros);
    event.message = first(&record, &shape.message).map_or_else(String::new, message_text);
    let unit = record.get("_SYSTEMD_UNIT").and_then(Value::as_str);
    let unit = unit.map(str::to_string);
    let tag = record.remove("kubetag").map(serde_json::from_value::<TagView>);
    if let Some(Ok(tag)) = tag {
        event.objects = objects(&tag, unit);
        event.component = tag.component;
    }
    event
}

fn first<'a>(record: &'a Map<String, Value>, names: &[String]) -> Option<&'a Value> {
    names.iter().find_map(|name| record.get(name))
}

fn micros(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => crate::record::shape::micros(text),
        Value::Number(number) => crate::record::shape::micros(&number.to_string()),
        _ => None,
    }
}

/// MESSAGE as journalctl prints it: text, an array of bytes, or the values of a field that
/// occurs several times.
fn message_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Array(items) if items.iter().all(Value::is_u64) => {
            let bytes: Vec<u8> = items
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Value::Array(items) => items.iter().map(message_text).collect::<Vec<_>>().join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The objects a record names. The unit is journald's own field whatever the shape, as it
/// is only used for `journalctl -u`; kernel records have none and are marked `kernel`.
fn objects(tag: &TagView, unit: Option<String>) -> [Option<String>; Object::ALL.len()] {
    let text = |key: &str| tag.attributes.get(key).and_then(Value::as_str);
    let mut objects: [Option<String>; Object::ALL.len()] = Default::default();
    for object in Object::ALL {
        let (_, _, attribute) = object.spec();
        objects[object.index()] = attribute.and_then(text).map(str::to_string);
    }
    if let (Some(namespace), Some(pod)) = (text("k8s.namespace.name"), text("k8s.pod.name")) {
        objects[Object::Pod.index()] = Some(format!("{namespace}/{pod}"));
    }
    let kernel = (tag.component == "kernel").then(|| "kernel".to_string());
    objects[Object::Unit.index()] = unit.or(kernel);
    objects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::ruleset::RuleSet;
    use crate::tag::Unmatched;

    fn tagger() -> Arc<Tagger> {
        Arc::new(Tagger {
            rules: Arc::new(RuleSet::shipped().expect("shipped rules load")),
            shape: Shape::journald(),
            unmatched: Unmatched::Drop,
            mask: Arc::new(crate::tag::mask::Masker::off()),
        })
    }

    fn scan_text(text: &str, threads: usize, read_bytes: usize) -> Aggregate {
        let input = Input {
            label: "test".into(),
            reader: Box::new(io::Cursor::new(text.as_bytes().to_vec())),
        };
        let limits = Limits { max_line_bytes: 400, read_bytes, threads };
        scan(vec![input], tagger(), &limits, &mut Progress::off()).expect("scan reads")
    }

    const PULL: &str = concat!(
        r#"{"_HOSTNAME":"node-1","__REALTIME_TIMESTAMP":"1700000000123456","#,
        r#""_SYSTEMD_UNIT":"kubelet.service","MESSAGE":"E1121 08:22:37.585238    8228 "#,
        r#"kuberuntime_image.go:53] \"Failed to pull image\" err=\"rpc error: code = "#,
        r#"Unknown desc = pull access denied\" image=\"myrepo/myapp:v1.0\" "#,
        r#"pod=\"shop/web-1\""}"#
    );

    #[test]
    fn every_line_is_counted_once() {
        let long = format!(r#"{{"MESSAGE":"{}"}}"#, "x".repeat(500));
        let text = format!("{PULL}\r\nnot json\n\n{long}\n{{\"MESSAGE\":\"fine\"}}\n{PULL}");
        for (threads, read_bytes) in [(1, 16), (3, 64), (2, 1 << 16)] {
            let aggregate = scan_text(&text, threads, read_bytes);
            assert_eq!(aggregate.records, 6, "{threads} threads");
            assert_eq!(aggregate.bytes, text.len() as u64);
            assert_eq!(aggregate.tagged_total(), 2);
            assert_eq!(aggregate.unmatched, 1);
            assert_eq!(aggregate.malformed_total(), 3);
            assert_eq!(aggregate.malformed[Malformed::TooLong.index()], 1);
        }
    }

    #[test]
    fn a_long_last_line_counts_the_bytes_it_took() {
        let long = format!(r#"{{"MESSAGE":"{}"}}"#, "x".repeat(500));
        let cases = [
            ("without a newline", format!("{PULL}\n{long}")),
            ("with a newline", format!("{PULL}\n{long}\n")),
            ("ending in crlf", format!("{PULL}\n{long}\r\n")),
            ("ending in a cr", format!("{PULL}\n{long}\r")),
        ];
        for (name, text) in cases {
            for read_bytes in [16, 1 << 16] {
                let aggregate = scan_text(&text, 1, read_bytes);
                assert_eq!(aggregate.records, 2, "{name}");
                assert_eq!(aggregate.bytes, text.len() as u64, "{name}, reads of {read_bytes}");
                assert_eq!(aggregate.malformed[Malformed::TooLong.index()], 1, "{name}");
            }
        }
    }

    #[test]
    fn a_tagged_record_becomes_an_event() {
        let aggregate = scan_text(&format!("{PULL}\n"), 1, 1 << 16);
        let (category, stats) = aggregate.seen().next().expect("one category");
        assert_eq!(category.id(), "image_pull");
        assert_eq!(stats.first, Some(1_700_000_000_123_456));
        let kept = |object: Object| stats.objects[object.index()].kept.clone();
        assert_eq!(kept(Object::Pod), [("shop/web-1".to_string(), 1)]);
        assert_eq!(kept(Object::Image), [("myrepo/myapp:v1.0".to_string(), 1)]);
        assert_eq!(kept(Object::Unit), [("kubelet.service".to_string(), 1)]);
        let example = stats.example.as_ref().expect("an example");
        assert!(example.message.starts_with("E1121 08:22:37"), "{example:?}");
    }

    #[test]
    fn message_forms_decode_to_text() {
        let cases: &[(&str, &str, &str)] = &[
            ("string", r#""a \"b\"""#, "a \"b\""),
            ("bytes", "[104,105,255]", "hi\u{fffd}"),
            ("multi-valued", r#"["one","two"]"#, "one\ntwo"),
            ("null", "null", ""),
        ];
        for (name, json, want) in cases {
            let value: Value = serde_json::from_str(json).expect("case is JSON");
            assert_eq!(message_text(&value), *want, "{name}");
        }
    }
}
