//! Burst control: kubelet repeats the same error every few seconds (`ImagePullBackOff`,
//! `PLEG is not healthy`). Repeats of one rule for one object within a window are held
//! back: the first record is forwarded at once, and when the window closes the last
//! repeat is written once more as a summary, its `kubetag` object holding
//! `"repeats": {"count": N, "first": TIME, "last": TIME}`: N records held back, the
//! times of the burst's first and last record.
//!
//! The stage is pure logic over the clock it is given. A window opens with its first
//! record and closes a fixed time later (the window of the record's category); a record
//! after that opens a new one. Open windows, and the bytes of the repeats they hold, are
//! capped: making room closes the one due first, early, with its summary.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::stats::Counts;
use crate::tag::category::{Category, CATEGORIES};
use crate::tag::route::{Route, Routed};

fn default_max_windows() -> usize {
    10_000
}

fn default_max_held_bytes() -> usize {
    16 << 20
}

/// `[dedupe]`: off unless a window is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    /// Repeats within this many seconds of the first are collapsed; 0 is off.
    pub window_secs: u64,
    /// Windows for some categories, by category id, replacing `window_secs`; 0 is off.
    pub categories: BTreeMap<String, u64>,
    /// Windows open at once, each holding one record.
    pub max_windows: usize,
    /// Bytes of the records the open windows hold, together: a burst of long records
    /// would otherwise hold up to `max_windows` of them.
    pub max_held_bytes: usize,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig {
            window_secs: 0,
            categories: BTreeMap::new(),
            max_windows: default_max_windows(),
            max_held_bytes: default_max_held_bytes(),
        }
    }
}

impl DedupeConfig {
    pub(crate) fn check(&self) -> Result<(), String> {
        if let Some(name) = self.categories.keys().find(|c| Category::from_id(c).is_none()) {
            return Err(format!("categories: no category named {name:?}"));
        }
        if self.max_windows == 0 {
            return Err("max_windows must be greater than 0".into());
        }
        if self.max_held_bytes == 0 {
            return Err("max_held_bytes must be greater than 0".into());
        }
        Ok(())
    }

    /// Whether any category is deduplicated.
    pub(crate) fn enabled(&self) -> bool {
        self.windows().iter().any(Option::is_some)
    }

    /// Each category's window, by category index.
    fn windows(&self) -> [Option<Duration>; CATEGORIES.len()] {
        let mut windows = [None; CATEGORIES.len()];
        for category in Category::all() {
            let secs = self.categories.get(category.id()).copied().unwrap_or(self.window_secs);
            windows[category.index()] = (secs > 0).then(|| Duration::from_secs(secs));
        }
        windows
    }
}

/// What makes two records repeats of each other: the rule and the objects it names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    rule: u32,
    objects: [Option<String>; 6],
}

impl Key {
    fn of(route: &Route, rule: u32) -> Key {
        let objects = [
            route.node.clone(),
            route.namespace.clone(),
            route.pod.clone(),
            route.container.clone(),
            route.image.clone(),
            route.volume.clone(),
        ];
        Key { rule, objects }
    }
}

/// One burst being counted.
struct Window {
    /// When it closes, and a sequence number to order windows due at the same instant.
    due: (Instant, u64),
    first: Option<u64>,
    repeats: u64,
    /// The last repeat held back, whole, and its facts.
    last: Option<(Vec<u8>, Route)>,
}

/// Output lines, each with its facts, as a batch carries them.
#[derive(Default)]
pub(crate) struct Lines {
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: Vec<Routed>,
}

impl Lines {
    fn push(&mut self, line: &[u8], route: Route) {
        self.bytes.extend_from_slice(line);
        self.records.push(Routed { end: self.bytes.len(), route });
    }
}

/// The stage's state: the open windows.
pub(crate) struct Dedupe {
    windows: [Option<Duration>; CATEGORIES.len()],
    max_windows: usize,
    max_held_bytes: usize,
    /// Bytes of the repeats the open windows hold.
    held: usize,
    open: HashMap<Key, Window>,
    due: BTreeMap<(Instant, u64), Key>,
    seq: u64,
}

impl Dedupe {
    /// The stage for `config`, or `None` when it deduplicates nothing.
    pub(crate) fn new(config: &DedupeConfig) -> Option<Dedupe> {
        config.enabled().then(|| Dedupe {
            windows: config.windows(),
            max_windows: config.max_windows.max(1),
            max_held_bytes: config.max_held_bytes.max(1),
            held: 0,
            open: HashMap::new(),
            due: BTreeMap::new(),
            seq: 0,
        })
    }

    /// Runs one batch's output lines through the stage at `now`: repeats are taken out,
    /// and summaries of windows closed to make room are added at the end. The batch's
    /// counts are moved from forwarded to deduplicated accordingly.
    pub(crate) fn batch(&mut self, lines: &mut Lines, counts: &mut Counts, now: Instant) {
        if lines.records.is_empty() {
            return;
        }
        let mut kept = Lines::default();
        let mut summaries = Lines::default();
        let mut start = 0;
        for routed in lines.records.drain(..) {
            let line = &lines.bytes[start..routed.end];
            start = routed.end;
            if self.forward(line, &routed.route, now, &mut summaries) {
                kept.push(line, routed.route);
            } else {
                counts.forwarded -= 1;
                counts.deduplicated += 1;
            }
        }
        counts.summaries += summaries.records.len() as u64;
        kept.bytes.extend_from_slice(&summaries.bytes);
        let end = kept.records.last().map_or(0, |r| r.end);
        kept.records.extend(summaries.records.into_iter().map(|mut r| {
            r.end += end;
            r
        }));
        *lines = kept;
    }

    /// Whether one line goes on now; a repeat is held in its window instead.
    fn forward(&mut self, line: &[u8], route: &Route, now: Instant, out: &mut Lines) -> bool {
        let Some(rule) = route.rule else { return true };
        let category = Category::from_id(route.category);
        let Some(window) = category.and_then(|c| self.windows[c.index()]) else { return true };
        let key = Key::of(route, rule);
        if let Some(open) = self.open.get_mut(&key) {
            if open.due.0 > now {
                open.repeats += 1;
                let previous = open.last.replace((line.to_vec(), route.clone()));
                self.held = self.held - previous.map_or(0, |(line, _)| line.len()) + line.len();
                while self.held > self.max_held_bytes && self.close_first(out) {}
                return false;
            }
            self.close(&key, out);
        }
        while self.open.len() >= self.max_windows && self.close_first(out) {}
        self.seq += 1;
        let due = (now + window, self.seq);
        self.due.insert(due, key.clone());
        self.open.insert(key, Window { due, first: route.micros, repeats: 0, last: None });
        true
    }

    /// Closes every window due by `now` (all of them with `now` = `None`, at the end of a
    /// run), returning their summaries.
    pub(crate) fn expire(&mut self, now: Option<Instant>) -> Lines {
        let mut out = Lines::default();
        while let Some(entry) = self.due.first_entry() {
            if now.is_some_and(|now| entry.key().0 > now) {
                break;
            }
            let key = entry.remove();
            self.close(&key, &mut out);
        }
        out
    }

    /// Closes the window due first, early; false when none is open.
    fn close_first(&mut self, out: &mut Lines) -> bool {
        let Some((_, first)) = self.due.pop_first() else { return false };
        self.close(&first, out);
        true
    }

    fn close(&mut self, key: &Key, out: &mut Lines) {
        let Some(window) = self.open.remove(key) else { return };
        self.due.remove(&window.due);
        let Some((line, route)) = window.last else { return };
        self.held -= line.len();
        let repeats = serde_json::json!({
            "count": window.repeats,
            "first": window.first.and_then(crate::tag::rfc3339),
            "last": route.micros.and_then(crate::tag::rfc3339),
        });
        out.push(&with_repeats(&line, &repeats), route);
    }
}

/// A tagged line with `"repeats"` added to its `kubetag` object, which the tagger always
/// writes last: the line ends with the tag's `}`, the record's `}` and a newline.
fn with_repeats(line: &[u8], repeats: &serde_json::Value) -> Vec<u8> {
    let body = line.strip_suffix(b"}}\n").unwrap_or(line);
    let mut out = Vec::with_capacity(line.len() + 96);
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"repeats\":");
    out.extend_from_slice(repeats.to_string().as_bytes());
    out.extend_from_slice(b"}}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(window_secs: u64, max_windows: usize) -> Dedupe {
        let mut categories = BTreeMap::new();
        categories.insert("probe".to_string(), 0);
        let config = DedupeConfig { window_secs, categories, max_windows, ..Default::default() };
        Dedupe::new(&config).unwrap()
    }

    /// A tagged record of `rule` and `category` for `pod` at second `second`.
    fn record(rule: u32, category: &'static str, pod: &str, second: u64) -> (Vec<u8>, Route) {
        let line = format!(
            "{{\"MESSAGE\":\"m{second}\",\"kubetag\":{{\"rule\":\"r{rule}\",\"attributes\":{{}}}}}}\n"
        );
        let route = Route {
            rule: Some(rule),
            category,
            pod: Some(pod.into()),
            micros: Some(1_700_000_000_000_000 + second * 1_000_000),
            ..Route::default()
        };
        (line.into_bytes(), route)
    }

    fn batch(records: &[(Vec<u8>, Route)]) -> (Lines, Counts) {
        let mut lines = Lines::default();
        for (line, route) in records {
            lines.push(line, route.clone());
        }
        let counts = Counts { forwarded: records.len() as u64, ..Counts::default() };
        (lines, counts)
    }

    fn messages(lines: &Lines) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(&lines.bytes)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn the_first_goes_at_once_and_the_repeats_are_summarised_when_the_window_closes() {
        let start = Instant::now();
        let mut dedupe = stage(30, 100);
        let records: Vec<_> = (0..4).map(|s| record(1, "image_pull", "web-1", s)).collect();
        let (mut lines, mut counts) = batch(&records);
        dedupe.batch(&mut lines, &mut counts, start);
        assert_eq!(messages(&lines).len(), 1);
        assert_eq!(messages(&lines)[0]["MESSAGE"], "m0");
        assert_eq!((counts.forwarded, counts.deduplicated, counts.summaries), (1, 3, 0));

        assert!(dedupe.expire(Some(start + Duration::from_secs(29))).bytes.is_empty());
        let summary = dedupe.expire(Some(start + Duration::from_secs(30)));
        let summary = &messages(&summary)[0];
        assert_eq!(summary["MESSAGE"], "m3", "the last repeat");
        assert_eq!(summary["kubetag"]["rule"], "r1");
        let repeats = &summary["kubetag"]["repeats"];
        assert_eq!(repeats["count"], 3);
        assert_eq!(repeats["first"], "2023-11-14T22:13:20.000000Z");
        assert_eq!(repeats["last"], "2023-11-14T22:13:23.000000Z");
    }

    #[test]
    fn other_rules_objects_and_undeduplicated_categories_pass() {
        let now = Instant::now();
        let mut dedupe = stage(30, 100);
        let records = [
            record(1, "image_pull", "web-1", 0),
            record(2, "image_pull", "web-1", 1),
            record(1, "image_pull", "web-2", 2),
            record(3, "probe", "web-1", 3),
            record(3, "probe", "web-1", 4),
        ];
        let (mut lines, mut counts) = batch(&records);
        let unmatched = Route { category: "unmatched", ..Route::default() };
        lines.push(b"{\"MESSAGE\":\"plain\"}\n", unmatched.clone());
        lines.push(b"{\"MESSAGE\":\"plain\"}\n", unmatched);
        counts.forwarded += 2;
        dedupe.batch(&mut lines, &mut counts, now);
        assert_eq!(messages(&lines).len(), 7);
        assert_eq!((counts.forwarded, counts.deduplicated), (7, 0));
        assert!(dedupe.expire(None).bytes.is_empty(), "no repeats, no summaries");
    }

    #[test]
    fn a_repeat_after_the_window_opens_a_new_one() {
        let start = Instant::now();
        let mut dedupe = stage(10, 100);
        for (second, forwarded) in [(0, 1), (5, 0), (10, 1), (12, 0)] {
            let (mut lines, mut counts) = batch(&[record(1, "image_pull", "web-1", second)]);
            dedupe.batch(&mut lines, &mut counts, start + Duration::from_secs(second));
            // The repeat at 5 s is summarised when the window is found closed at 10 s.
            let summaries = u64::from(second == 10);
            assert_eq!((counts.forwarded, counts.summaries), (forwarded, summaries), "{second}");
        }
        let last = dedupe.expire(None);
        assert_eq!(messages(&last)[0]["kubetag"]["repeats"]["count"], 1);
    }

    #[test]
    fn the_cap_closes_the_window_due_first_early() {
        let start = Instant::now();
        let mut dedupe = stage(60, 2);
        let mut at = |second: u64, pod: &str| {
            let (mut lines, mut counts) = batch(&[record(1, "image_pull", pod, second)]);
            dedupe.batch(&mut lines, &mut counts, start + Duration::from_secs(second));
            (messages(&lines), counts)
        };
        at(0, "a");
        at(1, "a");
        at(2, "b");
        let (out, counts) = at(3, "c");
        assert_eq!(out.len(), 2, "c itself, then a's summary");
        assert_eq!(out[0]["MESSAGE"], "m3");
        assert_eq!(out[1]["kubetag"]["repeats"]["count"], 1);
        assert_eq!((counts.forwarded, counts.summaries), (1, 1));
        assert_eq!(dedupe.open.len(), 2);
    }

    #[test]
    fn summaries_keep_the_batch_records_in_step_with_its_bytes() {
        let start = Instant::now();
        let mut dedupe = stage(60, 1);
        let (mut lines, mut counts) = batch(&[
            record(1, "image_pull", "a", 0),
            record(1, "image_pull", "a", 1),
            record(1, "image_pull", "b", 2),
        ]);
        dedupe.batch(&mut lines, &mut counts, start);
        let ends: Vec<usize> = lines.records.iter().map(|r| r.end).collect();
        let newlines: Vec<usize> = lines
            .bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| i + 1)
            .collect();
        assert_eq!(ends, newlines);
        assert_eq!(lines.records[2].route.pod.as_deref(), Some("a"), "a's summary last");
    }

    /// Long repeats in many windows: the bytes held stay under the cap, the windows due
    /// first closing early with their summaries, and nothing is lost.
    #[test]
    fn the_repeats_held_are_capped_in_bytes() {
        let start = Instant::now();
        let mut dedupe = stage(60, 100);
        let line_bytes = record(1, "image_pull", "pod-0", 0).0.len();
        dedupe.max_held_bytes = 3 * line_bytes;
        // Five pods, each a first record and a repeat: five repeats held at most three.
        let records: Vec<_> = (0..5)
            .flat_map(|p| [0, 1].map(|s| record(1, "image_pull", &format!("pod-{p}"), s)))
            .collect();
        let (mut lines, mut counts) = batch(&records);
        dedupe.batch(&mut lines, &mut counts, start);
        assert!(dedupe.held <= dedupe.max_held_bytes, "{} held", dedupe.held);
        assert_eq!((counts.forwarded, counts.deduplicated, counts.summaries), (5, 5, 2));
        let early: Vec<_> =
            messages(&lines).iter().map(|m| m["kubetag"]["repeats"].clone()).collect();
        assert_eq!(early.iter().filter(|r| r["count"] == 1).count(), 2, "pod-0 and pod-1 early");
        let rest = dedupe.expire(None);
        assert_eq!(messages(&rest).len(), 3);
        assert_eq!(dedupe.held, 0);
    }

    #[test]
    fn categories_are_checked_and_off_by_default() {
        assert!(!DedupeConfig::default().enabled());
        let mut config = DedupeConfig::default();
        config.categories.insert("pleg".into(), 60);
        assert!(config.enabled());
        assert_eq!(config.check(), Ok(()));
        config.categories.insert("nonsense".into(), 60);
        assert!(config.check().unwrap_err().contains("nonsense"));
    }
}
