//! `kubetag report`: reads a node's journal through the tagging code of the pipeline and
//! prints a diagnosis: the categories found, most severe first, with their times, the
//! objects they name, what the rules know about them, the commands to run next and the
//! probable root cause when categories follow each other.

mod aggregate;
mod commands;
mod links;
mod progress;
mod render;
mod scan;

use std::cmp::Reverse;
use std::io::{self, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::cli::Failure;
use crate::config::{ConfigError, PipelineConfig, Settings};
use crate::record::Malformed;
use crate::source::journal::JournalConfig;
use crate::source::SourceConfig;
use crate::tag::category::Category;
use crate::tag::rules::{RuleErrors, Severity};
use crate::tag::ruleset::RuleSet;
use crate::tag::{Tagger, Unmatched};
use aggregate::{Aggregate, CategoryStats, Object, RuleStats};

/// `kubetag report [FILE...]`.
#[derive(clap::Args)]
pub struct ReportArgs {
    /// Input files of journalctl JSON lines; `-` is stdin. Default: stdin.
    files: Vec<String>,
    /// How to print the report.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Pipeline configuration file: field names, line limits, threads, rules.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Rules directory replacing the shipped rules.
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
    /// Tagging threads, 1 to 64 (default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Read the journal itself with journalctl instead of files.
    #[arg(long, conflicts_with = "files")]
    journal: bool,
    /// With --journal: units to read (repeatable; default kubelet, containerd, crio, docker).
    #[arg(long = "unit", short = 'u', value_name = "UNIT", requires = "journal")]
    units: Vec<String>,
    /// With --journal: where to start, as journalctl's --since.
    #[arg(long, value_name = "WHEN", requires = "journal")]
    since: Option<String>,
    /// With --journal: one boot, as journalctl's --boot.
    #[arg(long, value_name = "BOOT", requires = "journal")]
    boot: Option<String>,
    /// With --journal: a journal directory instead of the system journal.
    #[arg(long = "directory", short = 'D', value_name = "DIR", requires = "journal")]
    directory: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned text, coloured when stdout is a terminal and NO_COLOR is not set.
    Text,
    /// Markdown, for a ticket.
    Markdown,
    /// One JSON object, for tools.
    Json,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Rules(#[from] RuleErrors),
    #[error("cannot open input {input}")]
    Open {
        input: String,
        #[source]
        source: io::Error,
    },
    #[error("reading the input")]
    Read(#[source] io::Error),
    #[error("writing the report")]
    Write(#[source] io::Error),
}

impl ReportError {
    /// Bad flags, configuration, rules or inputs are usage errors (exit 2); the rest
    /// failed while running (exit 1).
    fn into_failure(self) -> Failure {
        match self {
            ReportError::Read(_) | ReportError::Write(_) => Failure::Runtime(self.into()),
            _ => Failure::Usage(self.into()),
        }
    }
}

/// Runs `kubetag report` and maps its errors to the command line's exit codes.
pub fn cli(args: ReportArgs) -> Result<(), Failure> {
    run(&args).map_err(ReportError::into_failure)
}

fn run(args: &ReportArgs) -> Result<(), ReportError> {
    let mut settings = Settings::from_config(PipelineConfig::load(args.config.as_deref())?)?;
    if let Some(threads) = args.threads {
        settings.threads = threads.clamp(1, crate::config::MAX_THREADS);
    }
    let rules_dir = args.rules.as_deref().or(settings.rules_dir.as_deref());
    let rules = Arc::new(RuleSet::load(rules_dir)?);
    let inputs = if args.journal {
        vec![journal_input(args, settings.max_line_bytes)?]
    } else {
        open_inputs(&args.files, settings.max_line_bytes)?
    };

    let tagger = Arc::new(Tagger {
        rules: rules.clone(),
        shape: settings.shape.clone(),
        // Only tagged records are read back; the others are just counted.
        unmatched: Unmatched::Drop,
        // Example messages are printed: secrets in them are masked as in forwarded records.
        mask: settings.mask.clone(),
    });
    let limits = scan::Limits {
        max_line_bytes: settings.max_line_bytes,
        read_bytes: settings.read_bytes,
        threads: settings.threads,
    };
    let mut progress = progress::Progress::for_stderr();
    let aggregate =
        scan::scan(inputs, tagger, &limits, &mut progress).map_err(ReportError::Read)?;

    let report = Report::build(&aggregate, &rules);
    let text = match args.format {
        Format::Text => render::text(&report, colour_wanted()),
        Format::Markdown => render::markdown(&report),
        Format::Json => render::json(&report),
    };
    write_stdout(text.as_bytes())
}

/// Every input opened before any is read, so a missing file is refused at once. Each may
/// be journalctl's JSON lines or its export format.
fn open_inputs(files: &[String], max_line_bytes: usize) -> Result<Vec<scan::Input>, ReportError> {
    let names: Vec<&str> =
        if files.is_empty() { vec!["-"] } else { files.iter().map(String::as_str).collect() };
    let mut inputs = Vec::new();
    for name in names {
        let config = SourceConfig::from_path(name);
        let reader =
            config.open().map_err(|source| ReportError::Open { input: config.label(), source })?;
        let reader = either_format(reader, max_line_bytes)
            .map_err(|source| ReportError::Open { input: config.label(), source })?;
        inputs.push(scan::Input { label: config.label(), reader });
    }
    Ok(inputs)
}

/// JSON lines as they are; the export format turned into them.
fn either_format(
    reader: Box<dyn io::Read + Send>,
    max_line_bytes: usize,
) -> io::Result<Box<dyn io::Read + Send>> {
    let mut reader = io::BufReader::with_capacity(1 << 20, reader);
    let head = io::BufRead::fill_buf(&mut reader)?;
    if crate::source::export::is_export(head) {
        Ok(Box::new(crate::source::export::JsonLines::new(reader, max_line_bytes)))
    } else {
        Ok(Box::new(reader))
    }
}

/// `journalctl --output=export` over the selection, to its end.
fn journal_input(args: &ReportArgs, max_line_bytes: usize) -> Result<scan::Input, ReportError> {
    let mut journal = JournalConfig { follow: false, ..JournalConfig::default() };
    if !args.units.is_empty() {
        journal.units = args.units.clone();
    }
    journal.since = args.since.clone();
    journal.boot = args.boot.clone();
    journal.directory = args.directory.clone();
    let open = |source| ReportError::Open { input: "journal".into(), source };
    let mut child = journal.spawn(None).map_err(open)?;
    let stdout = child.stdout.take().expect("journalctl's stdout is piped");
    let lines = crate::source::export::JsonLines::new(io::BufReader::new(stdout), max_line_bytes);
    let reader = Journalctl { lines, child: Some(child) };
    Ok(scan::Input { label: "journal".into(), reader: Box::new(reader) })
}

/// journalctl's entries; at their end, its exit status: a journalctl that failed (a bad
/// --since, a missing directory) fails the report instead of passing for a clean journal.
struct Journalctl<R> {
    lines: R,
    child: Option<std::process::Child>,
}

impl<R: io::Read> io::Read for Journalctl<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.lines.read(out)?;
        if n == 0 {
            if let Some(mut child) = self.child.take() {
                let status = child.wait()?;
                if !status.success() {
                    return Err(io::Error::other(format!("journalctl failed: {status}")));
                }
            }
        }
        Ok(n)
    }
}

fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && io::stdout().is_terminal()
}

/// A closed stdout (`| head`) is not a failure.
fn write_stdout(bytes: &[u8]) -> Result<(), ReportError> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(ReportError::Write(e)),
        _ => Ok(()),
    }
}

/// A moment, in microseconds since the epoch; RFC 3339 in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Time(u64);

impl Time {
    /// Seconds, UTC, in the form `journalctl --since` reads.
    pub(crate) fn short(self) -> String {
        commands::journal_time(self.0)
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let time = UNIX_EPOCH + Duration::from_micros(self.0);
        serializer.collect_str(&humantime::format_rfc3339_micros(time))
    }
}

/// The diagnosis, in the order every format prints it. The JSON format is this, as is.
#[derive(Serialize)]
pub(crate) struct Report {
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) tagged: u64,
    pub(crate) unmatched: u64,
    pub(crate) omitted_messages: u64,
    pub(crate) malformed: u64,
    pub(crate) malformed_by_reason: Vec<MalformedCount>,
    /// The first and last tagged record.
    pub(crate) first: Option<Time>,
    pub(crate) last: Option<Time>,
    pub(crate) root_causes: Vec<RootCause>,
    pub(crate) categories: Vec<CategoryReport>,
}

#[derive(Serialize)]
pub(crate) struct MalformedCount {
    pub(crate) reason: &'static str,
    pub(crate) description: &'static str,
    pub(crate) count: u64,
}

#[derive(Serialize)]
pub(crate) struct RootCause {
    pub(crate) earlier: &'static str,
    pub(crate) later: &'static str,
    pub(crate) earlier_first: Time,
    pub(crate) later_first: Time,
    pub(crate) gap_seconds: u64,
    pub(crate) explanation: &'static str,
}

#[derive(Serialize)]
pub(crate) struct CategoryReport {
    pub(crate) category: &'static str,
    pub(crate) title: &'static str,
    /// The highest severity among the rules that fired.
    pub(crate) severity: &'static str,
    pub(crate) count: u64,
    pub(crate) first: Option<Time>,
    pub(crate) last: Option<Time>,
    pub(crate) affected: Vec<Affected>,
    pub(crate) rules: Vec<RuleReport>,
    pub(crate) commands: Vec<String>,
    pub(crate) example: Option<ExampleReport>,
}

/// The values of one kind of object: the first ones seen, and how many others.
#[derive(Serialize)]
pub(crate) struct Affected {
    pub(crate) kind: &'static str,
    #[serde(skip)]
    pub(crate) label: &'static str,
    pub(crate) values: Vec<Counted>,
    pub(crate) more: usize,
    /// `more` stopped counting: there are at least that many others.
    pub(crate) more_is_lower_bound: bool,
}

#[derive(Serialize)]
pub(crate) struct Counted {
    pub(crate) value: String,
    pub(crate) count: u64,
}

#[derive(Serialize)]
pub(crate) struct RuleReport {
    pub(crate) rule: String,
    pub(crate) severity: &'static str,
    pub(crate) count: u64,
    pub(crate) summary: String,
    pub(crate) cause: Vec<String>,
    pub(crate) remediation: Vec<String>,
}

#[derive(Serialize)]
pub(crate) struct ExampleReport {
    pub(crate) time: Option<Time>,
    pub(crate) component: String,
    pub(crate) message: String,
    pub(crate) truncated: bool,
}

impl Report {
    fn build(aggregate: &Aggregate, rules: &RuleSet) -> Report {
        let mut categories: Vec<(Severity, CategoryReport)> = aggregate
            .seen()
            .map(|(category, stats)| category_report(category, stats, rules))
            .collect();
        // Most severe first, then the most frequent; `seen` gives ties in table order.
        categories.sort_by_key(|(severity, c)| (Reverse(*severity), Reverse(c.count)));
        let seen_at = |c: Category, ids: &[&str]| first_seen(aggregate, rules, c, ids);
        Report {
            records: aggregate.records,
            bytes: aggregate.bytes,
            tagged: aggregate.tagged_total(),
            unmatched: aggregate.unmatched,
            omitted_messages: aggregate.omitted_messages,
            malformed: aggregate.malformed_total(),
            malformed_by_reason: malformed_counts(aggregate),
            first: aggregate.seen().filter_map(|(_, s)| s.first).min().map(Time),
            last: aggregate.seen().filter_map(|(_, s)| s.last).max().map(Time),
            root_causes: links::notes(seen_at).iter().map(root_cause).collect(),
            categories: categories.into_iter().map(|(_, c)| c).collect(),
        }
    }
}

/// When `category` was first seen, by any of its rules or only by the rules `ids`.
fn first_seen(
    aggregate: &Aggregate,
    rules: &RuleSet,
    category: Category,
    ids: &[&str],
) -> Option<u64> {
    let stats = aggregate.categories[category.index()].as_ref()?;
    if ids.is_empty() {
        return stats.first;
    }
    let named = |(index, _): &(usize, &RuleStats)| ids.contains(&rules.rules()[*index].id.as_str());
    stats.by_rule.iter().enumerate().filter(named).filter_map(|(_, rule)| rule.first).min()
}

fn malformed_counts(aggregate: &Aggregate) -> Vec<MalformedCount> {
    Malformed::ALL
        .iter()
        .map(|&reason| MalformedCount {
            reason: reason.name(),
            description: reason.describe(),
            count: aggregate.malformed[reason.index()],
        })
        .filter(|m| m.count > 0)
        .collect()
}

fn root_cause(note: &links::Note) -> RootCause {
    RootCause {
        earlier: note.earlier.id(),
        later: note.later.id(),
        earlier_first: Time(note.earlier_first),
        later_first: Time(note.later_first),
        gap_seconds: (note.later_first - note.earlier_first) / 1_000_000,
        explanation: note.explanation,
    }
}

fn category_report(
    category: Category,
    stats: &CategoryStats,
    rules: &RuleSet,
) -> (Severity, CategoryReport) {
    let mut fired: Vec<(u32, RuleStats)> = stats
        .by_rule
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule.count > 0)
        .map(|(index, rule)| (index as u32, *rule))
        .collect();
    // The rule that set the category's severity first; among equals the most frequent, then
    // the one that started first (an unknown time last).
    fired.sort_by_key(|&(index, rule)| {
        let severity = rules.rule(index).severity;
        (Reverse(severity), Reverse(rule.count), rule.first.is_none(), rule.first, index)
    });
    let severity = fired.first().map_or(Severity::Info, |&(index, _)| rules.rule(index).severity);
    let report = CategoryReport {
        category: category.id(),
        title: category.info().title,
        severity: severity.name(),
        count: stats.count,
        first: stats.first.map(Time),
        last: stats.last.map(Time),
        affected: affected(stats),
        rules: fired.iter().map(|&(index, rule)| rule_report(rules, index, rule.count)).collect(),
        commands: commands::next_commands(category, stats),
        example: stats.example.as_ref().map(|e| ExampleReport {
            time: e.micros.map(Time),
            component: e.component.clone(),
            message: e.message.clone(),
            truncated: e.truncated,
        }),
    };
    (severity, report)
}

fn affected(stats: &CategoryStats) -> Vec<Affected> {
    Object::ALL
        .iter()
        .map(|&object| {
            let values = &stats.objects[object.index()];
            Affected {
                kind: object.name(),
                label: object.label(),
                values: values
                    .kept
                    .iter()
                    .map(|(value, count)| Counted { value: value.clone(), count: *count })
                    .collect(),
                more: values.others(),
                more_is_lower_bound: values.others_capped,
            }
        })
        .filter(|a| !a.values.is_empty())
        .collect()
}

fn rule_report(rules: &RuleSet, index: u32, count: u64) -> RuleReport {
    let rule = rules.rule(index);
    RuleReport {
        rule: rule.id.to_string(),
        severity: rule.severity.name(),
        count,
        summary: rule.summary.clone(),
        cause: rule.cause.clone(),
        remediation: rule.remediation.clone(),
    }
}
