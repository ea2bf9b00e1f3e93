//! The bounded summary of a run: per category its count, time span, rules, the objects its
//! records name and one example, plus the counters of every line read.
//!
//! Memory does not grow with the input: per category and kind of object at most
//! [`MAX_VALUES`] values are kept by name, and only hashes of the others, up to a cap.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};

use crate::record::Malformed;
use crate::tag::category::{Category, CATEGORIES};

/// Values kept by name per category and kind of object.
pub(crate) const MAX_VALUES: usize = 20;

/// Distinct values past the kept ones are counted exactly up to this many.
pub(crate) const MAX_OTHERS: usize = 4096;

/// Characters of an example message kept; a message may be up to `max_line_bytes`.
pub(crate) const MAX_EXAMPLE_CHARS: usize = 1000;

/// The kinds of object a report lists for a category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Object {
    Node,
    /// `namespace/pod` when the namespace is known, else the pod name.
    Pod,
    Container,
    ContainerId,
    Image,
    Volume,
    /// The systemd unit that wrote the record; `kernel` for the kernel's own records.
    Unit,
}

impl Object {
    pub(crate) const ALL: [Object; 7] = [
        Object::Node,
        Object::Pod,
        Object::Container,
        Object::ContainerId,
        Object::Image,
        Object::Volume,
        Object::Unit,
    ];

    /// The name in JSON, the label in text, and the kubetag attribute that holds the value.
    pub(crate) fn spec(self) -> (&'static str, &'static str, Option<&'static str>) {
        match self {
            Object::Node => ("nodes", "nodes", Some("k8s.node.name")),
            Object::Pod => ("pods", "pods", Some("k8s.pod.name")),
            Object::Container => ("containers", "containers", Some("k8s.container.name")),
            Object::ContainerId => ("container_ids", "container ids", Some("container.id")),
            Object::Image => ("images", "images", Some("container.image.name")),
            Object::Volume => ("volumes", "volumes", Some("k8s.volume.name")),
            Object::Unit => ("units", "units", None),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        self.spec().0
    }

    pub(crate) fn label(self) -> &'static str {
        self.spec().1
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One tagged record, reduced to what the report needs.
#[derive(Debug, Default)]
pub(crate) struct Event {
    /// The primary rule, by its index in the rule set.
    pub(crate) rule: u32,
    /// Microseconds since the epoch, from the record's realtime field.
    pub(crate) micros: Option<u64>,
    pub(crate) objects: [Option<String>; Object::ALL.len()],
    /// kubetag's name for the agent that wrote it: kubelet, containerd, kernel, ...
    pub(crate) component: String,
    pub(crate) message: String,
}

/// The first distinct values seen, with their counts, and how many others there were.
#[derive(Debug, Default)]
pub(crate) struct Values {
    pub(crate) kept: Vec<(String, u64)>,
    others: HashSet<u64>,
    /// Some distinct values went uncounted once `others` was full.
    pub(crate) others_capped: bool,
}

impl Values {
    pub(crate) fn add(&mut self, value: &str) {
        if let Some((_, count)) = self.kept.iter_mut().find(|(v, _)| v == value) {
            *count += 1;
        } else if self.kept.len() < MAX_VALUES {
            self.kept.push((value.to_string(), 1));
        } else {
            let mut hasher = DefaultHasher::new();
            value.hash(&mut hasher);
            let hash = hasher.finish();
            if self.others.len() < MAX_OTHERS {
                self.others.insert(hash);
            } else if !self.others.contains(&hash) {
                self.others_capped = true;
            }
        }
    }

    /// Distinct values not kept by name (a lower bound when `others_capped`).
    pub(crate) fn others(&self) -> usize {
        self.others.len()
    }
}

/// An example message of a category: the first record of it read.
#[derive(Debug)]
pub(crate) struct Example {
    pub(crate) micros: Option<u64>,
    pub(crate) component: String,
    pub(crate) message: String,
    pub(crate) truncated: bool,
}

/// What was seen of one rule: how often it was the primary, and first when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RuleStats {
    pub(crate) count: u64,
    pub(crate) first: Option<u64>,
}

/// The earlier of two optional times.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// What was seen of one category.
#[derive(Debug, Default)]
pub(crate) struct CategoryStats {
    pub(crate) count: u64,
    pub(crate) first: Option<u64>,
    pub(crate) last: Option<u64>,
    /// Per primary rule, indexed by rule; grown on demand.
    pub(crate) by_rule: Vec<RuleStats>,
    pub(crate) objects: [Values; Object::ALL.len()],
    pub(crate) example: Option<Example>,
}

impl CategoryStats {
    fn add(&mut self, event: Event) {
        self.count += 1;
        self.first = earliest(self.first, event.micros);
        self.last = self.last.max(event.micros);
        let rule = event.rule as usize;
        if self.by_rule.len() <= rule {
            self.by_rule.resize(rule + 1, RuleStats::default());
        }
        let stats = &mut self.by_rule[rule];
        stats.count += 1;
        stats.first = earliest(stats.first, event.micros);
        for (values, value) in self.objects.iter_mut().zip(&event.objects) {
            if let Some(value) = value {
                values.add(value);
            }
        }
        if self.example.is_none() {
            self.example = Some(example(event));
        }
    }
}

fn example(event: Event) -> Example {
    let truncated = event.message.chars().nth(MAX_EXAMPLE_CHARS).is_some();
    let mut message = event.message;
    if truncated {
        let end = message.char_indices().nth(MAX_EXAMPLE_CHARS).map_or(message.len(), |(at, _)| at);
        message.truncate(end);
    }
    Example { micros: event.micros, component: event.component, message, truncated }
}

/// Everything a report is made from.
#[derive(Debug, Default)]
pub(crate) struct Aggregate {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) unmatched: u64,
    pub(crate) omitted_messages: u64,
    pub(crate) malformed: [u64; Malformed::ALL.len()],
    pub(crate) categories: [Option<CategoryStats>; CATEGORIES.len()],
}

impl Aggregate {
    pub(crate) fn tagged(&mut self, category: Category, event: Event) {
        self.categories[category.index()].get_or_insert_with(CategoryStats::default).add(event);
    }

    pub(crate) fn tagged_total(&self) -> u64 {
        self.categories.iter().flatten().map(|c| c.count).sum()
    }

    pub(crate) fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }

    /// The categories seen, with their stats.
    pub(crate) fn seen(&self) -> impl Iterator<Item = (Category, &CategoryStats)> {
        Category::all().filter_map(|c| self.categories[c.index()].as_ref().map(|s| (c, s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_are_counted_not_kept() {
        let mut values = Values::default();
        for i in 0..MAX_VALUES + 5 {
            values.add(&format!("pod-{i}"));
            values.add(&format!("pod-{i}"));
        }
        values.add("pod-0");
        assert_eq!(values.kept.len(), MAX_VALUES);
        assert_eq!(values.kept[0], ("pod-0".to_string(), 3));
        assert_eq!(values.others(), 5);
        assert!(!values.others_capped);
    }

    #[test]
    fn others_stop_growing_at_their_cap() {
        let mut values = Values::default();
        for i in 0..MAX_VALUES + MAX_OTHERS + 3 {
            values.add(&i.to_string());
        }
        assert_eq!(values.others(), MAX_OTHERS);
        assert!(values.others_capped);
    }

    #[test]
    fn first_and_last_come_from_times_not_order() {
        let mut stats = CategoryStats::default();
        for (rule, micros) in [(1, Some(50)), (0, Some(10)), (1, None), (1, Some(90))] {
            let event = Event { rule, micros, message: format!("m{rule}"), ..Event::default() };
            stats.add(event);
        }
        assert_eq!((stats.count, stats.first, stats.last), (4, Some(10), Some(90)));
        let counts: Vec<_> = stats.by_rule.iter().map(|r| (r.count, r.first)).collect();
        assert_eq!(counts, [(1, Some(10)), (3, Some(50))]);
        let example = stats.example.expect("an example is kept");
        assert_eq!((example.micros, example.message.as_str()), (Some(50), "m1"));
    }

    #[test]
    fn a_long_example_is_cut_on_a_character() {
        let event = Event { message: "é".repeat(MAX_EXAMPLE_CHARS + 1), ..Event::default() };
        let example = example(event);
        assert!(example.truncated);
        assert_eq!(example.message.chars().count(), MAX_EXAMPLE_CHARS);
    }
}
