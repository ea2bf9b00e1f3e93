//! Tools for the people who write rules: run every rule's examples and near misses and
//! case files of real messages, lint a rule set, explain a category or rule.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::record::Shape;
use crate::tag::category::{Category, CATEGORIES};
use crate::tag::mask::Masker;
use crate::tag::ruleset::RuleSet;
use crate::tag::{Outcome, Tagger, Unmatched, Worker};

/// One real message and the category it must get ("none": it must stay untagged). Both the
/// project's case files and the shared samples use these keys.
#[derive(Debug, Deserialize)]
pub struct Case {
    #[serde(alias = "id")]
    pub name: String,
    #[serde(default)]
    pub unit: String,
    pub message: String,
    pub category: String,
    /// The record's other categories, in any order; when given, exactly these must follow the
    /// primary one. On a "none" case they name the families the chatter resembles, and the
    /// message must still stay untagged.
    #[serde(default)]
    pub also: Option<Vec<String>>,
    /// Why kubetag cannot give this case's `also` yet: the difference is reported as a gap,
    /// not a failure, and a gap that closes fails so the note goes.
    #[serde(default)]
    pub known_gap: Option<String>,
}

/// Reads a JSON-lines case file.
pub fn read_cases(path: &Path) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

/// What the pipeline makes of one message from one unit: the rules that hit, primary first.
pub struct Judge {
    worker: Worker,
}

/// The verdict on a message: primary category, every category (primary first) and rule ids,
/// empty when untagged.
#[derive(Debug, Default)]
pub struct Verdict {
    pub category: Option<String>,
    pub categories: Vec<String>,
    pub rules: Vec<String>,
}

impl Judge {
    pub fn new(rules: Arc<RuleSet>) -> Judge {
        let mask = Arc::new(Masker::off());
        let tagger = Tagger { rules, shape: Shape::journald(), unmatched: Unmatched::Drop, mask };
        Judge { worker: Worker::new(Arc::new(tagger)) }
    }

    /// Runs `message` through the same code as the pipeline, as a journalctl record.
    pub fn judge(&mut self, unit: &str, message: &str) -> Verdict {
        let record = serde_json::json!({ "_SYSTEMD_UNIT": unit, "MESSAGE": message });
        let line = serde_json::to_vec(&record).expect("a JSON value serializes");
        let mut out = Vec::new();
        if !matches!(self.worker.line(&line, &mut out), Outcome::Tagged { .. }) {
            return Verdict::default();
        }
        let value: serde_json::Value = serde_json::from_slice(&out).expect("output is JSON");
        let tag = &value["kubetag"];
        Verdict {
            category: tag["category"].as_str().map(str::to_string),
            categories: strings(&tag["categories"]),
            rules: strings(&tag["rules"]),
        }
    }
}

fn strings(list: &serde_json::Value) -> Vec<String> {
    let items = list.as_array().into_iter().flatten();
    items.filter_map(|item| item.as_str().map(str::to_string)).collect()
}

/// What `rules test` found: how many messages it checked, the failures and the known gaps.
#[derive(Debug, Default)]
pub struct Results {
    pub checked: usize,
    pub failures: Vec<String>,
    pub gaps: Vec<String>,
}

/// Runs every rule's examples and near misses, then the cases.
pub fn test(rules: Arc<RuleSet>, cases: &[Case]) -> Results {
    let mut judge = Judge::new(rules.clone());
    let Results { mut checked, mut failures, mut gaps } = Results::default();
    for rule in rules.rules() {
        let id = rule.id.as_str();
        for example in &rule.examples {
            checked += 1;
            let verdict = judge.judge("", example);
            if !verdict.rules.iter().any(|r| r == id) {
                failures.push(format!(
                    "{id}: example not tagged by it ({}): {example}",
                    fired(&verdict)
                ));
            }
        }
        for near in &rule.near_misses {
            checked += 1;
            let verdict = judge.judge("", near);
            if verdict.rules.iter().any(|r| r == id) {
                failures.push(format!("{id}: near miss tagged by it: {near}"));
            }
        }
    }
    for case in cases {
        checked += 1;
        let verdict = judge.judge(&case.unit, &case.message);
        let got = verdict.category.as_deref().unwrap_or("none");
        if got != case.category {
            failures.push(format!(
                "case {}: want {}, got {got} ({}): {}",
                case.name,
                case.category,
                fired(&verdict),
                case.message
            ));
        } else if let Some(problem) = also_problem(case, &verdict) {
            let line =
                format!("case {}: {problem} ({}): {}", case.name, fired(&verdict), case.message);
            match &case.known_gap {
                Some(why) => gaps.push(format!("{line} (known gap: {why})")),
                None => failures.push(line),
            }
        } else if case.known_gap.is_some() {
            failures.push(format!("case {}: known gap closed, drop its known_gap", case.name));
        }
    }
    Results { checked, failures, gaps }
}

/// How a tagged case's other categories differ from its `also`, if they do. The sets must be
/// equal: an extra category sends a reader to the wrong place as surely as a missing one
/// hides the right one (rules/README.md, Testing).
fn also_problem(case: &Case, verdict: &Verdict) -> Option<String> {
    let also = case.also.as_ref().filter(|_| case.category != "none")?;
    let want: BTreeSet<&str> = also.iter().map(String::as_str).collect();
    let got: BTreeSet<&str> = verdict.categories.iter().skip(1).map(String::as_str).collect();
    if want == got {
        return None;
    }
    let list = |set: &BTreeSet<&str>| set.iter().copied().collect::<Vec<_>>().join(", ");
    Some(format!("want also [{}], got also [{}]", list(&want), list(&got)))
}

fn fired(verdict: &Verdict) -> String {
    if verdict.rules.is_empty() {
        "no rule fired".into()
    } else {
        format!("fired: {}", verdict.rules.join(", "))
    }
}

/// Patterns this short tag chatter by accident.
const MIN_PATTERN_BYTES: usize = 8;

/// Problems that load but make a weak rule set.
pub fn lint(rules: &RuleSet) -> Vec<String> {
    let mut problems = Vec::new();
    for rule in rules.rules() {
        let id = rule.id.as_str();
        if rule.examples.is_empty() {
            problems.push(format!("{id}: no examples"));
        }
        if rule.near_misses.is_empty() {
            problems.push(format!("{id}: no near misses"));
        }
        if rule.cause.is_empty() || rule.remediation.is_empty() {
            problems.push(format!("{id}: cause and remediation should not be empty"));
        }
        problems.extend(rule.extractor_errors().map(|e| format!("{id}: {e}")));
        for pattern in &rule.patterns {
            if pattern.len() < MIN_PATTERN_BYTES {
                problems.push(format!(
                    "{id}: pattern {pattern:?} is shorter than {MIN_PATTERN_BYTES} bytes"
                ));
            }
        }
        // A pattern containing another pattern of the same rule can never add a hit.
        for a in &rule.patterns {
            for b in &rule.patterns {
                let (la, lb) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
                if a != b && la.contains(&lb) {
                    problems.push(format!("{id}: pattern {a:?} is shadowed by {b:?}"));
                }
            }
        }
    }
    problems
}

/// The keys of a rule in their canonical order, as rules/README.md shows them.
const KEY_ORDER: [&str; 14] = [
    "id",
    "category",
    "severity",
    "components",
    "priority",
    "patterns",
    "require",
    "veto",
    "extract",
    "summary",
    "cause",
    "remediation",
    "examples",
    "near_misses",
];

/// Layout problems: a file without its opening comment, rule keys out of canonical order.
pub fn lint_format(sources: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    for (file, text) in sources {
        if !text.trim_start().starts_with('#') {
            problems
                .push(format!("{file}: should open with a comment saying what the family covers"));
        }
        let mut rule = String::new();
        let mut last = 0;
        for (n, line) in text.lines().enumerate() {
            if line.trim() == "[[rule]]" {
                (rule, last) = (format!("rule at line {}", n + 1), 0);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else { continue };
            let key = key.trim();
            let Some(place) = KEY_ORDER.iter().position(|k| *k == key) else { continue };
            if key == "id" {
                rule = value.trim().trim_matches('"').to_string();
            }
            if place < last {
                problems.push(format!("{file}:{}: {rule}: key {key} is out of order", n + 1));
            }
            last = place;
        }
    }
    problems
}

/// The knowledge behind a category or a rule, for a terminal.
pub fn explain(rules: &RuleSet, name: &str) -> Option<String> {
    let mut text = String::new();
    if let Some(category) = Category::from_id(name) {
        let info = category.info();
        let _ = writeln!(text, "{} ({})\n\n{}\n", info.title, info.id, wrap(info.about));
        let _ = writeln!(text, "Rules:");
        for rule in rules.rules().iter().filter(|r| r.category == category) {
            let _ =
                writeln!(text, "  {:<40} {:<8} {}", rule.id, rule.severity.name(), rule.summary);
        }
        return Some(text);
    }
    let rule = rules.rules().iter().find(|r| r.id.as_str() == name)?;
    let _ = writeln!(
        text,
        "{} [{} / {}]\n\n{}\n",
        rule.id,
        rule.category,
        rule.severity.name(),
        wrap(&rule.summary)
    );
    let list = |text: &mut String, title: &str, items: &[String]| {
        if !items.is_empty() {
            let _ = writeln!(text, "{title}:");
            for item in items {
                let _ = writeln!(text, "  - {}", item);
            }
            text.push('\n');
        }
    };
    list(&mut text, "Probable causes", &rule.cause);
    list(&mut text, "Remediation", &rule.remediation);
    list(&mut text, "Patterns", &rule.patterns);
    list(&mut text, "Example", &rule.examples[..rule.examples.len().min(1)]);
    Some(text)
}

/// Known names, for an error message.
pub fn names() -> String {
    CATEGORIES.iter().map(|c| c.id).collect::<Vec<_>>().join(", ")
}

fn wrap(text: &str) -> String {
    let mut out = String::new();
    let mut width = 0;
    for word in text.split_whitespace() {
        if width > 0 && width + word.len() > 78 {
            out.push('\n');
            width = 0;
        } else if width > 0 {
            out.push(' ');
            width += 1;
        }
        out.push_str(word);
        width += word.len();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pull rule and a lower rule that also fires on pulls through a certificate error.
    const TWO_RULES: &str = r#"
[[rule]]
id = "pull.failed"
category = "image_pull"
severity = "error"
priority = 60
patterns = ["Failed to pull image"]
summary = "x"

[[rule]]
id = "cert.untrusted"
category = "certificate"
severity = "error"
priority = 40
patterns = ["certificate signed by unknown authority"]
summary = "x"
"#;

    fn case(category: &str, also: Option<&[&str]>, message: &str) -> Case {
        Case {
            name: format!("{category}-{also:?}"),
            unit: "kubelet.service".into(),
            message: message.into(),
            category: category.into(),
            also: also.map(|a| a.iter().map(|c| c.to_string()).collect()),
            known_gap: None,
        }
    }

    #[test]
    fn cases_check_the_other_categories_as_a_set_when_given() {
        let rules =
            Arc::new(RuleSet::from_sources(&[("t.toml".into(), TWO_RULES.into())]).unwrap());
        let pull = "Failed to pull image \"a\": x509: certificate signed by unknown authority";
        let passing = [
            case("image_pull", Some(&["certificate"]), pull),
            case("image_pull", None, pull),
            case("image_pull", Some(&[]), "Failed to pull image \"a\": not found"),
            case("none", Some(&["image_pull"]), "Pulling image \"a\""),
        ];
        let results = test(rules.clone(), &passing);
        assert_eq!((results.checked, results.failures.len()), (4, 0), "{results:?}");

        let failing =
            [case("image_pull", Some(&[]), pull), case("image_pull", Some(&["oom"]), pull)];
        let failures = test(rules, &failing).failures;
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[0].contains("want also [], got also [certificate]"), "{failures:?}");
        assert!(failures[1].contains("want also [oom], got also [certificate]"), "{failures:?}");
    }

    #[test]
    fn a_known_gap_is_reported_until_it_closes() {
        let rules =
            Arc::new(RuleSet::from_sources(&[("t.toml".into(), TWO_RULES.into())]).unwrap());
        let pull = "Failed to pull image \"a\": x509: certificate signed by unknown authority";
        let gap = |also: &[&str]| Case {
            known_gap: Some("why".into()),
            ..case("image_pull", Some(also), pull)
        };

        let results = test(rules.clone(), &[gap(&["oom"])]);
        assert!(results.failures.is_empty(), "{results:?}");
        assert_eq!(results.gaps.len(), 1, "{results:?}");
        assert!(results.gaps[0].contains("want also [oom]") && results.gaps[0].contains("why"));

        let results = test(rules, &[gap(&["certificate"])]);
        assert!(results.gaps.is_empty(), "{results:?}");
        assert_eq!(results.failures.len(), 1, "{results:?}");
        assert!(results.failures[0].contains("known gap closed"), "{results:?}");
    }

    #[test]
    fn format_lint_finds_the_missing_comment_and_keys_out_of_order() {
        let text = "[[rule]]\nid = \"a.b\"\nseverity = \"error\"\ncategory = \"oom\"\n";
        let problems = lint_format(&[("a.toml".into(), text.into())]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("comment"));
        assert_eq!(problems[1], "a.toml:4: a.b: key category is out of order");
        let good = format!(
            "# family\n{}",
            text.replace(
                "severity = \"error\"\ncategory = \"oom\"",
                "category = \"oom\"\nseverity = \"error\""
            )
        );
        assert!(lint_format(&[("a.toml".into(), good)]).is_empty());
    }
}
