//! Entry points for the fuzz targets (`fuzz/`) and their regression tests: each takes
//! arbitrary bytes, runs one parser or decision, and panics when an invariant breaks.
//! Not part of kubetag's interface.

use std::sync::{Arc, OnceLock};

use crate::record::json::{self, Field, Kind};
use crate::record::{Malformed, Message, Record, Shape};
use crate::tag::mask::{MaskConfig, MaskScratch, Masker};
use crate::tag::{Outcome, Tagger, Unmatched, Worker};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target, by name, for harnesses that pick one.
pub const TARGETS: &[(&str, Target)] = &[
    ("json_scan", json_scan),
    ("record", record),
    ("export", export),
    ("header", header),
    ("rules", rules),
    ("mask", mask),
    ("differential", differential),
];

/// The fast path: fields lie inside the line, in order, and each string field's range
/// holds a string that serde_json reads.
pub fn json_scan(data: &[u8]) {
    let mut fields = Vec::new();
    let Ok(close) = json::scan_object(data, &mut fields) else { return };
    assert_eq!(data.get(close), Some(&b'}'));
    let mut end = 0;
    for field in &fields {
        assert!(field.span.start >= end && field.span.end <= close, "{field:?}");
        assert!(field.key.start > field.span.start && field.value.end <= field.span.end);
        end = field.span.end;
        if field.kind == Kind::String {
            let quoted = &data[field.value.start - 1..field.value.end + 1];
            let text: Result<String, _> = serde_json::from_slice(quoted);
            assert!(text.is_ok(), "string field not JSON: {field:?}");
        }
    }
}

/// The full decode of a record: MESSAGE as kubetag decodes it equals serde_json's reading
/// of the same value, for text.
pub fn record(data: &[u8]) {
    let mut fields = Vec::new();
    let Ok(close) = json::scan_object(data, &mut fields) else { return };
    let record = Record { line: data, fields: &fields, close };
    let mut scratch = Vec::new();
    let shape = Shape::journald();
    let message = record.message(&shape, &mut scratch);
    for field in record.fields {
        let _ = record.text(field);
    }
    let Ok(Message::Text(text)) = message else { return };
    let field = record.field("MESSAGE").expect("a message has its field");
    if field.kind == Kind::String {
        let quoted = &data[field.value.start - 1..field.value.end + 1];
        let expected: String = serde_json::from_slice(quoted).expect("scanned strings parse");
        assert_eq!(&*text, expected.as_bytes());
    }
}

/// The export-format reader: whatever the stream, every entry it yields turns into one
/// JSON object that the fast path accepts.
pub fn export(data: &[u8]) {
    use crate::source::export::{write_json, Entry, ExportReader};
    let mut reader = ExportReader::new(data, 64 * 1024);
    let mut entry = Entry::default();
    let mut out = Vec::new();
    let mut fields = Vec::new();
    for _ in 0..1000 {
        match reader.next(&mut entry) {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
        out.clear();
        write_json(&entry, &mut out);
        let scanned = json::scan_object(&out, &mut fields);
        assert!(scanned.is_ok(), "{scanned:?}: {}", String::from_utf8_lossy(&out));
    }
}

/// The klog, logrus and kubelet-JSON header parsers, and the time field's reader, on any
/// text.
pub fn header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Some(micros) = crate::record::shape::micros(&text) {
        let _ = crate::tag::rfc3339(micros);
    }
    if let Some(header) = crate::tag::header::parse(&text) {
        serde_json::to_vec(&header).expect("a header serialises");
        let keys: std::collections::HashSet<_> = header.fields.iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), header.fields.len(), "a key twice: {:?}", header.fields);
    }
}

/// The rules loader on arbitrary TOML text: an error or a rule set, never a panic.
pub fn rules(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    let sources = vec![("fuzz.toml".to_string(), text)];
    if let Ok(rules) = crate::tag::ruleset::RuleSet::from_sources(&sources) {
        let _ = rules.any_pattern(b"failed to pull image");
    }
}

/// The masker keeps a valid JSON line valid JSON, with the same fields.
pub fn mask(data: &[u8]) {
    let line = match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(serde_json::Value::Object(_)) => data.to_vec(),
        Ok(_) | Err(_) => {
            let message = String::from_utf8_lossy(data);
            serde_json::to_vec(&serde_json::json!({ "MESSAGE": message })).expect("JSON")
        }
    };
    let mut out = line.clone();
    masker().mask(&mut out, 0, &mut MaskScratch::default());
    let before: serde_json::Value = serde_json::from_slice(&line).expect("the input is JSON");
    let after: serde_json::Value = serde_json::from_slice(&out)
        .unwrap_or_else(|e| panic!("masking broke JSON ({e}): {}", String::from_utf8_lossy(&out)));
    let keys = |v: &serde_json::Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&before), keys(&after));
}

/// The fast path and serde_json agree: they accept and refuse the same lines, and a record
/// is tagged the same (or left untagged the same) as its serde_json re-serialisation.
pub fn differential(data: &[u8]) {
    let mut fields: Vec<Field> = Vec::new();
    let fast = json::scan_object(data, &mut fields);
    // serde_json skips the bytes of an ignored string unchecked: its reference is the
    // text, as RFC 8259 (and serde_json::from_str) requires UTF-8. Ignoring a string does
    // not check its `\u` surrogates either, which reading it as a value does; a value's
    // number out of f64's range is still well-formed JSON.
    let text = std::str::from_utf8(data).map_err(|e| e.to_string());
    let full = text.and_then(|t| {
        serde_json::from_str::<serde::de::IgnoredAny>(t).map_err(|e| e.to_string())?;
        match serde_json::from_str::<serde_json::Value>(t) {
            Err(e) if !e.to_string().starts_with("number out of range") => Err(e.to_string()),
            Ok(_) | Err(_) => Ok(()),
        }
    });
    let object = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    assert_eq!(fast.is_ok(), full.is_ok() && object, "{fast:?} vs {full:?}");
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };

    let again = serde_json::to_vec(&value).expect("a value serialises");
    let mut out = Vec::new();
    let (first, second) = WORKER.with(|worker| {
        let mut worker = worker.borrow_mut();
        (worker.line(data, &mut out), worker.line(&again, &mut out))
    });
    // The worker sets aside a line it panics on; a fuzzer must still see the panic.
    assert_ne!(first, Outcome::Malformed(Malformed::Internal), "the worker panicked");
    assert_eq!(first, second, "{}", String::from_utf8_lossy(&again));
}

thread_local! {
    static WORKER: std::cell::RefCell<Worker> = std::cell::RefCell::new(Worker::new(tagger()));
}

fn tagger() -> Arc<Tagger> {
    static TAGGER: OnceLock<Arc<Tagger>> = OnceLock::new();
    TAGGER
        .get_or_init(|| {
            let rules = Arc::new(crate::RuleSet::shipped().expect("shipped rules load"));
            let mask = Arc::new(Masker::off());
            Arc::new(Tagger { rules, shape: Shape::journald(), unmatched: Unmatched::Drop, mask })
        })
        .clone()
}

fn masker() -> &'static Masker {
    static MASKER: OnceLock<Masker> = OnceLock::new();
    MASKER.get_or_init(|| Masker::new(&MaskConfig::default()).expect("shipped detectors build"))
}
