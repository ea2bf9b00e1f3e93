//! Counters of what a run did with the records it read. They add up: every record read is
//! tagged, unmatched or malformed; every one forwarded or passed is either written or
//! deduplicated, and the dedupe stage's summaries are written beside them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::record::Malformed;
use crate::tag::category::{Category, CATEGORIES};
use crate::tag::rules::RuleId;
use crate::tag::ruleset::RuleSet;

/// Counts for one batch or a whole run; batches are summed into the run's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    pub bytes: u64,
    pub tagged: u64,
    pub by_category: [u64; CATEGORIES.len()],
    /// One batch's rule hits, indexed by the rule set that tagged it; moved into `by_rule`
    /// by [`Counts::name_rules`] before batches are summed, since a reload renumbers rules.
    pub(crate) rule_hits: Vec<u64>,
    pub by_rule: BTreeMap<RuleId, u64>,
    pub unmatched: u64,
    /// Unmatched records whose message journalctl left out (`null`, over 4096 bytes).
    pub omitted_messages: u64,
    pub malformed: [u64; Malformed::ALL.len()],
    pub dead_lettered: u64,
    /// Records written to the sinks; a deduplicated one is not.
    pub forwarded: u64,
    /// Repeats the dedupe stage held back.
    pub deduplicated: u64,
    /// Summary records the dedupe stage wrote for them.
    pub summaries: u64,
    /// Secrets masked in forwarded records.
    pub masked: u64,
    /// By sink, the forwarded records it was handed and did not deliver: it failed, or a
    /// stop left it behind at the shutdown timeout. A write under way at that moment may
    /// still deliver part of them.
    pub undelivered: BTreeMap<String, u64>,
}

impl Counts {
    pub(crate) fn tagged(&mut self, rule: u32, category: Category) {
        self.tagged += 1;
        self.by_category[category.index()] += 1;
        let rule = rule as usize;
        if self.rule_hits.len() <= rule {
            self.rule_hits.resize(rule + 1, 0);
        }
        self.rule_hits[rule] += 1;
    }

    /// Moves the batch's rule hits into `by_rule`, named by the rule set that tagged them.
    pub(crate) fn name_rules(&mut self, rules: &RuleSet) {
        for (rule, n) in self.rule_hits.drain(..).enumerate().filter(|(_, n)| *n > 0) {
            *self.by_rule.entry(rules.rule(rule as u32).id.clone()).or_default() += n;
        }
    }

    pub(crate) fn malformed(&mut self, reason: Malformed) {
        self.malformed[reason.index()] += 1;
    }

    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }

    pub(crate) fn add(&mut self, other: &Counts) {
        self.records += other.records;
        self.bytes += other.bytes;
        self.tagged += other.tagged;
        for (a, b) in self.by_category.iter_mut().zip(other.by_category) {
            *a += b;
        }
        for (rule, n) in &other.by_rule {
            *self.by_rule.entry(rule.clone()).or_default() += n;
        }
        self.unmatched += other.unmatched;
        self.omitted_messages += other.omitted_messages;
        for (a, b) in self.malformed.iter_mut().zip(other.malformed) {
            *a += b;
        }
        self.dead_lettered += other.dead_lettered;
        self.forwarded += other.forwarded;
        self.deduplicated += other.deduplicated;
        self.summaries += other.summaries;
        self.masked += other.masked;
        for (sink, n) in &other.undelivered {
            *self.undelivered.entry(sink.clone()).or_default() += n;
        }
    }

    /// The counters as the stats file holds them.
    pub fn report(&self) -> Report {
        let named = |pairs: Vec<(String, u64)>| pairs.into_iter().filter(|(_, n)| *n > 0).collect();
        Report {
            records_read: self.records,
            bytes_read: self.bytes,
            tagged: self.tagged,
            tagged_by_category: named(
                Category::all()
                    .map(|c| (c.id().to_string(), self.by_category[c.index()]))
                    .collect(),
            ),
            tagged_by_rule: named(
                self.by_rule.iter().map(|(rule, &n)| (rule.to_string(), n)).collect(),
            ),
            unmatched: self.unmatched,
            omitted_messages: self.omitted_messages,
            malformed: self.malformed_total(),
            malformed_by_reason: named(
                Malformed::ALL
                    .iter()
                    .map(|m| (m.name().to_string(), self.malformed[m.index()]))
                    .collect(),
            ),
            dead_lettered: self.dead_lettered,
            forwarded: self.forwarded,
            deduplicated: self.deduplicated,
            summaries: self.summaries,
            masked: self.masked,
            undelivered_by_sink: named(
                self.undelivered.iter().map(|(sink, &n)| (sink.clone(), n)).collect(),
            ),
        }
    }
}

/// The end-of-run counters, as JSON in `--stats-file`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub records_read: u64,
    pub bytes_read: u64,
    pub tagged: u64,
    pub tagged_by_category: BTreeMap<String, u64>,
    pub tagged_by_rule: BTreeMap<String, u64>,
    pub unmatched: u64,
    pub omitted_messages: u64,
    pub malformed: u64,
    pub malformed_by_reason: BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub forwarded: u64,
    pub deduplicated: u64,
    pub summaries: u64,
    pub masked: u64,
    pub undelivered_by_sink: BTreeMap<String, u64>,
}

impl Report {
    /// A few lines for stderr.
    pub fn summary(&self) -> String {
        let mut text = format!(
            "kubetag: {} records read: {} tagged, {} unmatched, {} malformed; {} forwarded",
            self.records_read, self.tagged, self.unmatched, self.malformed, self.forwarded
        );
        if self.masked > 0 {
            let _ = write!(text, ", {} secrets masked", self.masked);
        }
        if self.dead_lettered > 0 {
            let _ = write!(text, ", {} dead-lettered", self.dead_lettered);
        }
        if self.deduplicated > 0 {
            let (repeats, summaries) = (self.deduplicated, self.summaries);
            let _ = write!(text, ", {repeats} repeats deduplicated into {summaries} summaries");
        }
        let list = |map: &BTreeMap<String, u64>| {
            map.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        };
        if !self.tagged_by_category.is_empty() {
            let _ = write!(text, "\n  tagged: {}", list(&self.tagged_by_category));
        }
        if !self.malformed_by_reason.is_empty() {
            let _ = write!(text, "\n  malformed: {}", list(&self.malformed_by_reason));
        }
        if !self.undelivered_by_sink.is_empty() {
            let _ =
                write!(text, "\n  not known to be delivered: {}", list(&self.undelivered_by_sink));
        }
        text
    }
}
