//! Counters of what a run did with the records it read. They add up: every record read is
//! tagged, unmatched or malformed.

use std::fmt::Write as _;

use serde::Serialize;

use crate::record::Malformed;
use crate::tag::category::{Category, CATEGORIES};
use crate::tag::ruleset::RuleSet;

/// Counts for one batch or a whole run; batches are summed into the run's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub records: u64,
    pub bytes: u64,
    pub tagged: u64,
    pub by_category: [u64; CATEGORIES.len()],
    /// Indexed by rule, grown on demand.
    pub by_rule: Vec<u64>,
    pub unmatched: u64,
    /// Unmatched records whose message journalctl left out (`null`, over 4096 bytes).
    pub omitted_messages: u64,
    pub malformed: [u64; Malformed::ALL.len()],
    pub dead_lettered: u64,
    pub forwarded: u64,
    /// Secrets masked in forwarded records.
    pub masked: u64,
}

impl Counts {
    pub(crate) fn tagged(&mut self, rule: u32, category: Category) {
        self.tagged += 1;
        self.by_category[category.index()] += 1;
        let rule = rule as usize;
        if self.by_rule.len() <= rule {
            self.by_rule.resize(rule + 1, 0);
        }
        self.by_rule[rule] += 1;
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
        if self.by_rule.len() < other.by_rule.len() {
            self.by_rule.resize(other.by_rule.len(), 0);
        }
        for (a, b) in self.by_rule.iter_mut().zip(&other.by_rule) {
            *a += b;
        }
        self.unmatched += other.unmatched;
        self.omitted_messages += other.omitted_messages;
        for (a, b) in self.malformed.iter_mut().zip(other.malformed) {
            *a += b;
        }
        self.dead_lettered += other.dead_lettered;
        self.forwarded += other.forwarded;
        self.masked += other.masked;
    }

    /// The counters as the stats file holds them.
    pub fn report(&self, rules: &RuleSet) -> Report {
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
                self.by_rule
                    .iter()
                    .enumerate()
                    .map(|(r, &n)| (rules.rule(r as u32).id.to_string(), n))
                    .collect(),
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
            masked: self.masked,
        }
    }
}

/// The end-of-run counters, as JSON in `--stats-file`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub records_read: u64,
    pub bytes_read: u64,
    pub tagged: u64,
    pub tagged_by_category: std::collections::BTreeMap<String, u64>,
    pub tagged_by_rule: std::collections::BTreeMap<String, u64>,
    pub unmatched: u64,
    pub omitted_messages: u64,
    pub malformed: u64,
    pub malformed_by_reason: std::collections::BTreeMap<String, u64>,
    pub dead_lettered: u64,
    pub forwarded: u64,
    pub masked: u64,
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
        let list = |map: &std::collections::BTreeMap<String, u64>| {
            map.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
        };
        if !self.tagged_by_category.is_empty() {
            let _ = write!(text, "\n  tagged: {}", list(&self.tagged_by_category));
        }
        if !self.malformed_by_reason.is_empty() {
            let _ = write!(text, "\n  malformed: {}", list(&self.malformed_by_reason));
        }
        text
    }
}
