//! The three forms of a report: aligned text for a terminal, Markdown for a ticket, JSON for
//! tools. All print the same [`Report`] in the same order.
//!
//! Messages and values come from the node's logs, so the text forms replace control
//! characters before printing: a log line must not be able to drive the reader's terminal.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use super::{Affected, CategoryReport, Report, RuleReport, Time};

/// The width text is wrapped to.
const WIDTH: usize = 100;

/// Where the values of a labelled line start.
const LABEL_WIDTH: usize = 16;

/// The report as one pretty-printed JSON object.
pub(crate) fn json(report: &Report) -> String {
    let mut text = serde_json::to_string_pretty(report).unwrap_or_else(|e| {
        // Every field is a string, number, bool or list of them; this cannot happen.
        format!("{{\"error\": {:?}}}", e.to_string())
    });
    text.push('\n');
    text
}

/// ANSI styles, or nothing when colour is off.
#[derive(Clone, Copy)]
struct Paint {
    on: bool,
}

impl Paint {
    fn style(self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn bold(self, text: &str) -> String {
        self.style("1", text)
    }

    fn command(self, text: &str) -> String {
        self.style("32", text)
    }

    fn severity(self, severity: &str, text: &str) -> String {
        let code = match severity {
            "critical" => "1;31",
            "error" => "31",
            "warning" => "33",
            _ => "36",
        };
        self.style(code, text)
    }
}

/// The report for a terminal, coloured when `colour` is set.
pub(crate) fn text(report: &Report, colour: bool) -> String {
    let paint = Paint { on: colour };
    let mut out = String::new();
    text_header(&mut out, report, paint);
    if !report.root_causes.is_empty() {
        text_root_causes(&mut out, report, paint);
    }
    if !report.categories.is_empty() {
        text_overview(&mut out, report, paint);
    }
    for category in &report.categories {
        text_category(&mut out, category, paint);
    }
    if !report.malformed_by_reason.is_empty() {
        let _ = writeln!(out, "\n{}", paint.bold("Malformed lines (skipped)"));
        for m in &report.malformed_by_reason {
            let _ = writeln!(out, "  {:<13}{:>6}  {}", m.reason, m.count, m.description);
        }
    }
    out
}

fn text_header(out: &mut String, report: &Report, paint: Paint) {
    let title = paint.bold("kubetag report:");
    let _ = writeln!(out, "{title} {}", totals(report));
    match (report.first, report.last) {
        (Some(first), Some(last)) => {
            let (first, last) = (first.short(), last.short());
            let _ = writeln!(out, "tagged records from {first} to {last}");
        }
        _ if report.categories.is_empty() => {
            let _ = writeln!(out, "no kubelet or container-runtime errors found");
        }
        _ => {}
    }
    if report.omitted_messages > 0 {
        let n = report.omitted_messages;
        let _ = writeln!(
            out,
            "{n} message(s) left out by journalctl (over 4096 bytes) were not read: run it \
             with --all"
        );
    }
}

/// `60 records (21.4 KiB), 23 tagged in 7 categories, 34 unmatched, 3 malformed`.
fn totals(report: &Report) -> String {
    let categories = report.categories.len();
    format!(
        "{} records ({}), {} tagged in {categories} categor{}, {} unmatched, {} malformed",
        report.records,
        size(report.bytes),
        report.tagged,
        if categories == 1 { "y" } else { "ies" },
        report.unmatched,
        report.malformed
    )
}

fn text_root_causes(out: &mut String, report: &Report, paint: Paint) {
    let _ = writeln!(out, "\n{}", paint.bold("Probable root cause"));
    for cause in &report.root_causes {
        let (earlier, later) = (cause.earlier, cause.later);
        let gap = gap(cause.gap_seconds);
        let _ = writeln!(out, "  {earlier} first, then {later} {gap} later");
        for line in wrap(cause.explanation, WIDTH - 4) {
            let _ = writeln!(out, "    {line}");
        }
    }
}

fn text_overview(out: &mut String, report: &Report, paint: Paint) {
    let _ = writeln!(out, "\n{}", paint.bold("Overview"));
    let width =
        report.categories.iter().map(|c| c.category.len()).max().unwrap_or(0).max("CATEGORY".len());
    let when = |t: Option<Time>| t.map_or_else(|| "-".to_string(), Time::short);
    let _ = writeln!(
        out,
        "  {:<9} {:<width$} {:>7}  {:<24} LAST",
        "SEVERITY", "CATEGORY", "COUNT", "FIRST"
    );
    for c in &report.categories {
        let severity = paint.severity(c.severity, &format!("{:<9}", c.severity));
        let _ = writeln!(
            out,
            "  {severity} {:<width$} {:>7}  {:<24} {}",
            c.category,
            c.count,
            when(c.first),
            when(c.last)
        );
    }
}

fn text_category(out: &mut String, c: &CategoryReport, paint: Paint) {
    let severity = paint.severity(c.severity, &c.severity.to_uppercase());
    let heading = paint.bold(&format!("{}: {}", c.category, c.title));
    let _ = writeln!(out, "\n{severity} {heading}");
    let span = match (c.first, c.last) {
        (Some(first), Some(last)) => format!(", {} to {}", first.short(), last.short()),
        _ => String::new(),
    };
    labelled(out, "records", &[format!("{}{span}", c.count)]);
    for affected in &c.affected {
        labelled(out, affected.label, &wrap(&values_line(affected), WIDTH - LABEL_WIDTH));
    }
    for rule in &c.rules {
        labelled(out, "rule", &rule_lines(rule));
    }
    let commands: Vec<String> = c.commands.iter().map(|s| paint.command(&clean(s))).collect();
    labelled(out, "next", &commands);
    if let Some(example) = &c.example {
        let mut lines = vec![match example.time {
            Some(time) => format!("{} {}", time.short(), clean(&example.component)),
            None => clean(&example.component).into_owned(),
        }];
        for line in example.message.lines() {
            lines.extend(wrap_exact(&clean(line), WIDTH - LABEL_WIDTH));
        }
        if example.truncated {
            lines.push("[message cut short]".into());
        }
        labelled(out, "example", &lines);
    }
}

/// Lines under a label in the first column; nothing when there are none.
fn labelled(out: &mut String, label: &str, lines: &[String]) {
    for (i, line) in lines.iter().enumerate() {
        let label = if i == 0 { label } else { "" };
        let _ = writeln!(out, "  {label:<w$}{line}", w = LABEL_WIDTH - 2);
    }
}

fn rule_lines(rule: &RuleReport) -> Vec<String> {
    let width = WIDTH - LABEL_WIDTH;
    let mut lines = vec![format!(
        "{} ({}, {} record{})",
        rule.rule,
        rule.severity,
        rule.count,
        plural(rule.count)
    )];
    let summary = wrap(&rule.summary, width - 2);
    lines.extend(summary.into_iter().map(|l| format!("  {l}")));
    for (title, items) in [("causes", &rule.cause), ("remediation", &rule.remediation)] {
        if items.is_empty() {
            continue;
        }
        lines.push(format!("  {title}:"));
        for item in items {
            for (i, line) in wrap(item, width - 6).into_iter().enumerate() {
                let bullet = if i == 0 { "  - " } else { "    " };
                lines.push(format!("  {bullet}{line}"));
            }
        }
    }
    lines
}

/// `web-1 (3), web-2 (1) and 4 more`.
fn values_line(affected: &Affected) -> String {
    let values: Vec<String> = affected
        .values
        .iter()
        .map(|v| format!("{} ({})", clean(short_value(affected.kind, &v.value)), v.count))
        .collect();
    format!("{}{}", values.join(", "), more(affected))
}

fn more(affected: &Affected) -> String {
    match (affected.more, affected.more_is_lower_bound) {
        (0, _) => String::new(),
        (n, false) => format!(" and {n} more"),
        (n, true) => format!(" and {n}+ more"),
    }
}

/// Container ids are 64 hex digits; the first 13 are what `crictl ps` prints and accepts.
fn short_value<'a>(kind: &str, value: &'a str) -> &'a str {
    if kind == "container_ids" {
        value.get(..13).unwrap_or(value)
    } else {
        value
    }
}

/// The report for a ticket.
pub(crate) fn markdown(report: &Report) -> String {
    let mut out = String::from("# kubetag report\n\n");
    let _ = writeln!(out, "{}.", totals(report));
    if let (Some(first), Some(last)) = (report.first, report.last) {
        let _ = writeln!(out, "Tagged records from {} to {}.", first.short(), last.short());
    } else if report.categories.is_empty() {
        out.push_str("No kubelet or container-runtime errors found.\n");
    }
    if report.omitted_messages > 0 {
        let _ = writeln!(
            out,
            "{} message(s) left out by journalctl (over 4096 bytes) were not read: run it \
             with `--all`.",
            report.omitted_messages
        );
    }
    if !report.root_causes.is_empty() {
        md_root_causes(&mut out, report);
    }
    if !report.categories.is_empty() {
        md_overview(&mut out, report);
    }
    for category in &report.categories {
        md_category(&mut out, category);
    }
    if !report.malformed_by_reason.is_empty() {
        out.push_str("\n## Malformed lines (skipped)\n\n| Reason | Count | What |\n");
        out.push_str("|---|---:|---|\n");
        for m in &report.malformed_by_reason {
            let _ = writeln!(out, "| `{}` | {} | {} |", m.reason, m.count, m.description);
        }
    }
    out
}

fn md_root_causes(out: &mut String, report: &Report) {
    out.push_str("\n## Probable root cause\n\n");
    for cause in &report.root_causes {
        let _ = writeln!(
            out,
            "- **`{}` first, then `{}` {} later** (from {}): {}.",
            cause.earlier,
            cause.later,
            gap(cause.gap_seconds),
            cause.earlier_first.short(),
            cause.explanation
        );
    }
}

fn md_overview(out: &mut String, report: &Report) {
    out.push_str("\n## Overview\n\n| Severity | Category | Count | First | Last |\n");
    out.push_str("|---|---|---:|---|---|\n");
    let when = |t: Option<Time>| t.map_or_else(|| "-".to_string(), Time::short);
    for c in &report.categories {
        let _ = writeln!(
            out,
            "| {} | `{}` | {} | {} | {} |",
            c.severity,
            c.category,
            c.count,
            when(c.first),
            when(c.last)
        );
    }
}

fn md_category(out: &mut String, c: &CategoryReport) {
    let _ = writeln!(out, "\n## `{}`: {} ({})\n", c.category, c.title, c.severity);
    let _ = write!(out, "{} record{}", c.count, plural(c.count));
    if let (Some(first), Some(last)) = (c.first, c.last) {
        let _ = write!(out, " from {} to {}", first.short(), last.short());
    }
    out.push_str(".\n\n");
    for affected in &c.affected {
        let values: Vec<String> = affected
            .values
            .iter()
            .map(|v| format!("{} ({})", code(short_value(affected.kind, &v.value)), v.count))
            .collect();
        let _ = writeln!(out, "- {}: {}{}", affected.label, values.join(", "), more(affected));
    }
    out.push_str("\n### Rules that fired\n");
    for rule in &c.rules {
        md_rule(out, rule);
    }
    if !c.commands.is_empty() {
        let commands: Vec<String> = c.commands.iter().map(|s| clean(s).into_owned()).collect();
        out.push_str("\n### Next commands\n\n");
        fenced(out, "sh", &commands.join("\n"));
    }
    if let Some(example) = &c.example {
        out.push_str("\n### Example\n\n");
        if let Some(time) = example.time {
            let _ = write!(out, "{}, ", time.short());
        }
        let _ = writeln!(out, "{}:\n", code(&example.component));
        let mut message = clean_lines(&example.message);
        if example.truncated {
            message.push_str("\n[message cut short]");
        }
        fenced(out, "text", &message);
    }
}

fn md_rule(out: &mut String, rule: &RuleReport) {
    let _ = writeln!(
        out,
        "\n**`{}`** ({}, {} record{}): {}\n",
        rule.rule,
        rule.severity,
        rule.count,
        plural(rule.count),
        rule.summary
    );
    for (title, items) in [("Probable causes", &rule.cause), ("Remediation", &rule.remediation)] {
        if items.is_empty() {
            continue;
        }
        let _ = writeln!(out, "- {title}:");
        for item in items {
            let _ = writeln!(out, "  - {item}");
        }
    }
}

/// A code block whose fence is longer than any run of backticks inside it.
fn fenced(out: &mut String, language: &str, body: &str) {
    let fence = "`".repeat(longest_run(body, '`').max(2) + 1);
    let _ = writeln!(out, "{fence}{language}\n{body}\n{fence}");
}

/// Inline code that survives backticks in the value.
fn code(value: &str) -> String {
    let value = clean(value);
    let ticks = "`".repeat(longest_run(&value, '`') + 1);
    let pad = if value.starts_with('`') || value.ends_with('`') { " " } else { "" };
    format!("{ticks}{pad}{value}{pad}{ticks}")
}

fn longest_run(text: &str, c: char) -> usize {
    let (mut longest, mut run) = (0, 0);
    for ch in text.chars() {
        run = if ch == c { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

/// Control characters written out as escapes; the text is otherwise unchanged.
fn clean(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Like [`clean`], keeping the line breaks of a multi-line message.
fn clean_lines(text: &str) -> String {
    text.lines().map(clean).collect::<Vec<_>>().join("\n")
}

/// Words into lines of at most `width` characters; a longer word is cut.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let used = line.chars().count();
            let room = if used == 0 { width } else { width.saturating_sub(used + 1) };
            if word.len() <= room {
                if used > 0 {
                    line.push(' ');
                }
                line.extend(word.iter());
                break;
            }
            if used > 0 {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            let rest = word.split_off(width.max(1));
            lines.push(word.iter().collect());
            word = rest;
        }
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Lines of at most `width` characters, broken at a space where there is one; unlike
/// [`wrap`], runs of spaces inside a line are kept as the message had them.
fn wrap_exact(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut rest: Vec<char> = text.chars().collect();
    while rest.len() > width {
        let cut = rest[1..=width].iter().rposition(|c| *c == ' ').map(|at| at + 1);
        let (line, skip) = match cut {
            Some(at) => (at, 1),
            None => (width, 0),
        };
        lines.push(rest[..line].iter().collect());
        rest.drain(..line + skip);
    }
    if !rest.is_empty() {
        lines.push(rest.into_iter().collect());
    }
    lines
}

fn gap(seconds: u64) -> String {
    humantime::format_duration(Duration::from_secs(seconds)).to_string()
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_table() {
        type Case<'a> = (&'a str, &'a str, usize, &'a [&'a str]);
        let cases: &[Case] = &[
            ("fits", "a b c", 10, &["a b c"]),
            ("breaks between words", "aaa bbb ccc", 7, &["aaa bbb", "ccc"]),
            ("cuts a long word", "abcdefghij", 4, &["abcd", "efgh", "ij"]),
            ("long word after a short one", "x abcdef", 4, &["x", "abcd", "ef"]),
            ("empty", "  ", 5, &[]),
        ];
        for (name, text, width, want) in cases {
            assert_eq!(wrap(text, *width), *want, "{name}");
        }
    }

    #[test]
    fn exact_wrap_keeps_spacing() {
        type Case<'a> = (&'a str, &'a str, usize, &'a [&'a str]);
        let cases: &[Case] = &[
            ("fits", "E1204    2101 x", 20, &["E1204    2101 x"]),
            ("breaks at the last space", "aa  bb cc", 6, &["aa  bb", "cc"]),
            ("cuts without a space", "abcdefg", 3, &["abc", "def", "g"]),
            ("space right after the cut", "abc def", 3, &["abc", "def"]),
        ];
        for (name, text, width, want) in cases {
            assert_eq!(wrap_exact(text, *width), *want, "{name}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("plain"), "plain");
        assert_eq!(clean("\x1b[31mred\x07"), "\\u{1b}[31mred\\u{7}");
        assert_eq!(clean_lines("one\ntwo\x1b"), "one\ntwo\\u{1b}");
    }

    #[test]
    fn code_spans_and_fences_outlast_backticks() {
        assert_eq!(code("web-1"), "`web-1`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`x"), "`` `x ``");
        let mut out = String::new();
        fenced(&mut out, "text", "has ```` inside");
        assert!(out.starts_with("`````text\n"), "{out}");
    }

    #[test]
    fn colour_only_when_asked() {
        let on = Paint { on: true };
        assert_eq!(on.severity("critical", "x"), "\x1b[1;31mx\x1b[0m");
        assert_eq!(Paint { on: false }.severity("critical", "x"), "x");
    }

    #[test]
    fn sizes_are_human() {
        let cases = [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (3 << 30, "3.0 GiB")];
        for (bytes, want) in cases {
            assert_eq!(size(bytes), want);
        }
    }
}
