//! The command line: `kubetag [FILE...]` runs the pipeline; subcommands check a
//! configuration, work with rules and explain what kubetag knows.

use std::io::Write as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use clap::{Args, Parser, Subcommand};

use crate::config::{kind_names, PipelineConfig, Settings, MAX_THREADS};
use crate::dead_letter::DeadLetter;
use crate::metrics::server::Server;
use crate::metrics::Metrics;
use crate::pipeline::{self, Stop};
use crate::rules_tool;
use crate::sink::SinkConfig;
use crate::source::SourceConfig;
use crate::tag::mask::Masker;
use crate::tag::ruleset::RuleSet;
use crate::tag::{Tagger, TaggerSlot, Unmatched};

/// Exit codes: 0 ok, 1 runtime failure, 2 bad usage, configuration or rules.
pub enum Failure {
    Usage(anyhow::Error),
    Runtime(anyhow::Error),
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Runtime(_) => 1,
        }
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Usage(e) | Failure::Runtime(e) => e,
        }
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(e.into())
}

#[derive(Parser)]
#[command(
    name = "kubetag",
    version,
    about = "Tags kubelet and container-runtime errors in journald JSON records",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration and a rules directory, reporting every problem.
    Check(ConfigArgs),
    /// Work with rules.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Explain a category or a rule.
    Explain {
        /// A category id (image_pull, ...) or a rule id (image_pull.not_found, ...).
        name: String,
        /// Rules directory replacing the shipped rules.
        #[arg(long, value_name = "DIR")]
        rules: Option<PathBuf>,
    },
    /// Diagnose a node from its journal: the problems found, their causes, what to run next.
    Report(crate::report::ReportArgs),
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Print every literal the automaton holds, one per line.
    Patterns {
        /// Rules directory (default: the shipped rules).
        dir: Option<PathBuf>,
    },
    /// Run every rule's examples and near misses, and case files of real messages.
    Test {
        /// Rules directory (default: the shipped rules).
        dir: Option<PathBuf>,
        /// JSON lines of {"name", "unit", "message", "category"}; repeatable.
        #[arg(long = "cases", value_name = "FILE")]
        cases: Vec<PathBuf>,
    },
    /// Report weak rules: no examples, short or shadowed patterns, keys out of order.
    Lint {
        /// Rules directory (default: the shipped rules).
        dir: Option<PathBuf>,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// Pipeline configuration file (see pipeline.toml).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Rules directory replacing the shipped rules.
    #[arg(long, value_name = "DIR")]
    rules: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Input files of journalctl JSON lines; `-` is stdin. Default: stdin.
    files: Vec<String>,
    #[command(flatten)]
    config: ConfigArgs,
    /// An input: `-` or `stdin`, `file:PATH` or a path, `journal`, `tcp://HOST:PORT` (listen),
    /// `kafka://HOST:PORT[,HOST:PORT]/TOPIC[,TOPIC]?group=GROUP[&until_end=true][&PROP=VALUE]`.
    /// Repeatable; replaces configured sources.
    #[arg(long = "input", short = 'i', value_name = "URL")]
    inputs: Vec<String>,
    /// An output: `-` or `stdout`, `file:PATH` or a path, `tcp://HOST:PORT`, `http://...` or
    /// `https://...` (POST),
    /// `kafka://HOST:PORT[,HOST:PORT]/TOPIC_TEMPLATE[?key=TEMPLATE][&PROP=VALUE]`.
    /// Repeatable; replaces configured sinks.
    #[arg(long = "output", short = 'o', value_name = "URL")]
    outputs: Vec<String>,
    /// What to do with untagged records.
    #[arg(long, value_enum)]
    unmatched: Option<Unmatched>,
    /// Forward secrets as they are (`[mask] enabled = false`).
    #[arg(long)]
    no_mask: bool,
    /// Write rejected lines here, one JSON envelope each.
    #[arg(long, value_name = "PATH")]
    dead_letter: Option<PathBuf>,
    /// Write the end-of-run counters here as JSON.
    #[arg(long, value_name = "PATH")]
    stats_file: Option<PathBuf>,
    /// The longest line taken (default 1 MiB); a longer one is skipped without being held
    /// whole and counted as `too_long`.
    #[arg(long, value_name = "BYTES")]
    max_line_bytes: Option<usize>,
    /// Tagging threads, 1 to 64 (default: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Serve /metrics, /healthz and /readyz here: HOST:PORT, or a port for loopback.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Log filter, e.g. `warn` or `kubetag=debug`.
    #[arg(long, default_value = "info", value_name = "FILTER")]
    log_level: String,
    /// Logs on stderr as text lines or as JSON objects.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// No end-of-run summary on stderr, warnings only.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Parses the command line and runs it.
pub fn main() -> Result<(), Failure> {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run),
        Some(Command::Check(args)) => check(args),
        Some(Command::Rules(command)) => rules(command),
        Some(Command::Explain { name, rules }) => explain(&name, rules),
        Some(Command::Report(args)) => crate::report::cli(args),
    }
}

fn load_rules(dir: Option<&std::path::Path>) -> Result<Arc<RuleSet>, Failure> {
    RuleSet::load(dir).map(Arc::new).map_err(usage)
}

fn settings(args: &RunArgs) -> Result<Settings, Failure> {
    let config = PipelineConfig::load(args.config.config.as_deref()).map_err(usage)?;
    let mut settings = Settings::from_config(config).map_err(usage)?;
    if !args.files.is_empty() || !args.inputs.is_empty() {
        // A FILE argument is always a file (or `-`); only --input takes source URLs.
        let files = args.files.iter().map(|f| Ok(SourceConfig::from_path(f)));
        let urls = args.inputs.iter().map(|i| SourceConfig::from_url(i));
        let parsed: Result<Vec<_>, String> = files.chain(urls).collect();
        settings.sources = parsed.map_err(|e| usage(anyhow!(e)))?;
        settings.source_names = kind_names(settings.sources.iter().map(SourceConfig::kind));
        let stdin = settings.sources.iter().filter(|s| **s == SourceConfig::Stdin).count();
        if stdin > 1 {
            return Err(usage(anyhow!("stdin (`-`) can be read only once")));
        }
    }
    if !args.outputs.is_empty() {
        let parsed: Result<Vec<_>, String> =
            args.outputs.iter().map(|o| SinkConfig::from_url(o)).collect();
        settings.sinks = parsed.map_err(|e| usage(anyhow!(e)))?;
        settings.sink_names = kind_names(settings.sinks.iter().map(SinkConfig::kind));
    }
    if let Some(dir) = &args.config.rules {
        settings.rules_dir = Some(dir.clone());
    }
    if let Some(unmatched) = args.unmatched {
        settings.unmatched = unmatched;
    }
    if args.no_mask {
        settings.mask = Arc::new(Masker::off());
    }
    if let Some(path) = &args.dead_letter {
        settings.dead_letter = Some(path.clone());
    }
    if let Some(path) = &args.stats_file {
        settings.stats_file = Some(path.clone());
    }
    if let Some(bytes) = args.max_line_bytes {
        if bytes == 0 {
            return Err(usage(anyhow!("--max-line-bytes must be greater than 0")));
        }
        settings.max_line_bytes = bytes;
    }
    if let Some(threads) = args.threads {
        settings.threads = threads.clamp(1, MAX_THREADS);
        if settings.threads != threads {
            tracing::warn!(asked = threads, using = settings.threads, "--threads out of range");
        }
    }
    if let Some(address) = &args.metrics {
        settings.metrics.address = Some(address.clone());
    }
    Ok(settings)
}

fn run(args: RunArgs) -> Result<(), Failure> {
    let level = if args.quiet { "warn" } else { args.log_level.as_str() };
    init_logging(level, args.log_format).map_err(usage)?;
    let settings = settings(&args)?;
    let rules = load_rules(settings.rules_dir.as_deref())?;
    tracing::info!(rules = rules.rules().len(), patterns = rules.patterns().len(), "rules loaded");
    let stats_file = check_start(&settings)?;

    let tagger = TaggerSlot::new(Arc::new(Tagger {
        rules: rules.clone(),
        shape: settings.shape.clone(),
        unmatched: settings.unmatched,
        mask: settings.mask.clone(),
    }));
    let metrics = Metrics::new(&settings.source_names, &settings.sink_names);
    metrics.rules_loaded(rules.rules().len());
    if let Some(address) = &settings.metrics.address {
        Server::bind(&settings.metrics, address)
            .and_then(|server| server.spawn(metrics.clone()))
            .map_err(|e| Failure::Runtime(e.into()))?;
    }
    let stop = Stop::default();
    let reload = reloader(tagger.clone(), settings.rules_dir.clone(), metrics.clone());
    crate::signals::watch(stop.clone(), metrics.clone(), reload);
    tracing::info!(threads = settings.threads, sources = settings.sources.len(), "started");
    let finished = pipeline::run(&settings, tagger, stop, metrics)
        .context("cannot start the pipeline")
        .map_err(Failure::Runtime)?;

    let report = finished.counts.report();
    tracing::info!(
        records = report.records_read,
        tagged = report.tagged,
        unmatched = report.unmatched,
        malformed = report.malformed,
        forwarded = report.forwarded,
        deduplicated = report.deduplicated,
        dead_lettered = report.dead_lettered,
        "stopped"
    );
    if !args.quiet {
        // eprintln! would panic on a closed stderr; the summary is not worth a crash.
        let _ = writeln!(std::io::stderr(), "{}", report.summary());
    }
    if let Some(stats_file) = stats_file {
        stats_file.write(&report).map_err(Failure::Runtime)?;
    }
    match finished.failures.first() {
        None => Ok(()),
        Some(first) => Err(Failure::Runtime(anyhow!("{first}"))),
    }
}

/// Refuses, before anything is read, what would only fail later: an input that cannot be
/// opened, an output with bad settings, an output that is also an input, a dead-letter or
/// stats path that cannot be written. Nothing is created until all of it passed. The stats
/// file stays open for the end of the run.
fn check_start(settings: &Settings) -> Result<Option<StatsFile>, Failure> {
    let files = Files::of(settings);
    if let Some(first) = files.problems().into_iter().next() {
        return Err(usage(first));
    }
    if let Some(path) = &settings.dead_letter {
        // The pipeline opens it again, to append, when it starts.
        DeadLetter::open(path).map_err(usage)?;
    }
    settings.stats_file.as_deref().map(StatsFile::open).transpose().map_err(usage)
}

/// The files a run reads and writes, as its settings or a configuration name them.
struct Files<'a> {
    sources: &'a [SourceConfig],
    sinks: &'a [SinkConfig],
    dead_letter: Option<&'a Path>,
    stats_file: Option<&'a Path>,
    /// Whether this process's stdin and stdout are the run's (not for `check`).
    stdio: bool,
}

impl<'a> Files<'a> {
    fn of(settings: &'a Settings) -> Files<'a> {
        Files {
            sources: &settings.sources,
            sinks: &settings.sinks,
            dead_letter: settings.dead_letter.as_deref(),
            stats_file: settings.stats_file.as_deref(),
            stdio: true,
        }
    }

    /// Every problem with them, in the order a run meets them; nothing is created.
    fn problems(&self) -> Vec<anyhow::Error> {
        let mut problems = Vec::new();
        for source in self.sources {
            if let Err(e) = source.check() {
                problems.push(anyhow!(e).context(format!("cannot open input {}", source.label())));
            }
        }
        for sink in self.sinks {
            if let Err(e) = sink.check() {
                problems.push(anyhow!(e).context(format!("output {}", sink.label())));
            }
        }
        for (what, path) in self.side_files() {
            if let Err(e) = check_side_file(path) {
                problems.push(e.context(format!("{what} {}", path.display())));
            }
        }
        if let Err(e) = self.refuse_shared() {
            problems.push(e);
        }
        problems
    }

    /// The files the run writes beside its sinks, each with what it is.
    fn side_files(&self) -> impl Iterator<Item = (&'static str, &'a Path)> {
        let files =
            [("the dead-letter file", self.dead_letter), ("the stats file", self.stats_file)];
        files.into_iter().filter_map(|(what, path)| Some((what, path?)))
    }
}

/// A dead-letter or stats path must be one the run can create or append to. Both are
/// opened before the run: a FIFO's open would wait there for a reader, before a stop can
/// be asked.
fn check_side_file(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    crate::sink::check_writable(path)?;
    match std::fs::metadata(path) {
        Ok(metadata) if metadata.file_type().is_fifo() => {
            Err(anyhow!("is a FIFO: give a regular file"))
        }
        Ok(_) | Err(_) => Ok(()),
    }
}

/// A regular file's identity, whatever path names it.
#[derive(PartialEq, Eq)]
enum FileId {
    /// A file that exists: its device and inode.
    Inode { dev: u64, ino: u64 },
    /// A file the run will create: its directory's device and inode, and its name there.
    New { dev: u64, ino: u64, name: std::ffi::OsString },
}

impl FileId {
    /// The identity of what `metadata` describes if it is a regular file: only a regular
    /// file keeps what is written to it for a later read, so only one can loop.
    fn of(metadata: std::io::Result<std::fs::Metadata>) -> Option<FileId> {
        let metadata = metadata.ok().filter(std::fs::Metadata::is_file)?;
        Some(FileId::Inode { dev: metadata.dev(), ino: metadata.ino() })
    }

    /// The identity of an output path: the file it names, or, when there is none yet, the
    /// place where the run will create it (`new.jsonl` and `./new.jsonl` are one file
    /// before either exists). A dangling link names the place its target would be made.
    fn of_output(path: &Path) -> Option<FileId> {
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            metadata => return FileId::of(metadata),
        }
        let (file, dir) = crate::sink::place_of_new_file(path);
        let name = file.file_name()?.to_os_string();
        let dir = std::fs::metadata(dir).ok()?;
        Some(FileId::New { dev: dir.dev(), ino: dir.ino(), name })
    }

    /// The file open as stdin or stdout, through a copy of its descriptor.
    fn of_fd(fd: std::os::fd::BorrowedFd<'_>) -> Option<FileId> {
        let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
        FileId::of(file.metadata())
    }
}

impl Files<'_> {
    /// Like `cat`, refuses to write to a file it reads: the run would read its own output
    /// back for ever (`kubetag --unmatched pass f >> f`), or overwrite it with its counters.
    /// Two outputs that are one file would mix their lines, or the counters would replace
    /// them.
    fn refuse_shared(&self) -> anyhow::Result<()> {
        let outputs = self.outputs();
        for source in self.sources {
            let id = match source {
                SourceConfig::Stdin if self.stdio => FileId::of_fd(std::io::stdin().as_fd()),
                SourceConfig::File { path } => FileId::of(std::fs::metadata(path)),
                _ => None,
            };
            if let Some((_, output)) = outputs.iter().find(|(out, _)| Some(out) == id.as_ref()) {
                let input = source.label();
                return Err(anyhow!(
                    "input {input} is also {output}: it would read its own output"
                ));
            }
        }
        for (i, (id, first)) in outputs.iter().enumerate() {
            if let Some((_, second)) = outputs[i + 1..].iter().find(|(other, _)| other == id) {
                return Err(anyhow!("{first} is also {second}: one would overwrite the other"));
            }
        }
        Ok(())
    }

    /// The regular files the run writes to, each with a name for an error.
    fn outputs(&self) -> Vec<(FileId, String)> {
        let mut outputs = Vec::new();
        for sink in self.sinks {
            let id = match sink {
                SinkConfig::Stdout if self.stdio => FileId::of_fd(std::io::stdout().as_fd()),
                SinkConfig::File { path } => FileId::of_output(path),
                _ => None,
            };
            outputs.extend(id.map(|id| (id, format!("the output {}", sink.label()))));
        }
        for (what, path) in self.side_files() {
            let id = FileId::of_output(path);
            outputs.extend(id.map(|id| (id, format!("{what} {}", path.display()))));
        }
        outputs
    }
}

/// The `--stats-file`, opened when the run starts so that a path that cannot be written
/// is refused then rather than found after the whole run.
struct StatsFile {
    path: PathBuf,
    file: std::fs::File,
}

impl StatsFile {
    fn open(path: &Path) -> anyhow::Result<StatsFile> {
        // Truncated only when the counters are written: a run refused after this check
        // leaves the file as it was.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write stats file {}", path.display()))?;
        Ok(StatsFile { path: path.to_path_buf(), file })
    }

    fn write(mut self, report: &crate::stats::Report) -> anyhow::Result<()> {
        let json = serde_json::to_vec_pretty(report).expect("counters serialize");
        self.file
            .set_len(0)
            .and_then(|()| self.file.write_all(&json))
            .with_context(|| format!("cannot write stats file {}", self.path.display()))
    }
}

/// What SIGHUP does: the rules are read again from where they were read at the start, and
/// swapped in only if every one of them loads.
fn reloader(
    tagger: TaggerSlot,
    dir: Option<PathBuf>,
    metrics: Metrics,
) -> impl FnMut() + Send + 'static {
    move || match tagger.reload(dir.as_deref()) {
        Ok(rules) => {
            metrics.reloaded(true);
            metrics.rules_loaded(rules.rules().len());
            let (n, patterns) = (rules.rules().len(), rules.patterns().len());
            let generation = tagger.generation();
            tracing::info!(rules = n, patterns, generation, "rules reloaded");
        }
        Err(errors) => {
            metrics.reloaded(false);
            let problems = errors.0.len();
            tracing::error!(problems, error = %errors, "new rules refused, the old ones go on");
        }
    }
}

fn init_logging(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("bad --log-level {filter:?}"))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A closed stderr must not crash the run: by default a failed log write is reported with
    // eprintln!, which panics on a closed stderr.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn check(args: ConfigArgs) -> Result<(), Failure> {
    let mut problems = Vec::new();
    let mut rules_dir = args.rules.clone();
    match PipelineConfig::load(args.config.as_deref()) {
        Ok(config) => {
            // The files are checked even when a value is wrong, so that one problem does
            // not hide the others.
            let sources: Vec<SourceConfig> = config.sources.values().cloned().collect();
            let sinks: Vec<SinkConfig> = config.sinks.values().cloned().collect();
            let files = Files {
                sources: &sources,
                sinks: &sinks,
                dead_letter: config.dead_letter.path.as_deref(),
                stats_file: config.run.stats_file.as_deref(),
                stdio: false,
            };
            problems.extend(files.problems().iter().map(|e| format!("{e:#}")));
            rules_dir = rules_dir.or(config.rules.dir.clone());
            if let Err(e) = Settings::from_config(config) {
                problems.push(e.to_string());
            }
        }
        Err(_) => problems.extend(PipelineConfig::problems(args.config.as_deref())),
    }
    match RuleSet::load(rules_dir.as_deref()) {
        Ok(rules) => {
            // Extractors compile when a record first needs one: a run would find one that
            // cannot only then.
            for rule in rules.rules() {
                let id = rule.id.as_str();
                problems.extend(rule.extractor_errors().map(|e| format!("rule {id}: {e}")));
            }
            let mut out = std::io::stdout().lock();
            let n = rules.rules().len();
            let _ = writeln!(out, "rules: {n} rules, {} patterns", rules.patterns().len());
        }
        Err(errors) => problems.extend(errors.0.iter().map(ToString::to_string)),
    }
    if problems.is_empty() {
        println!("ok");
        return Ok(());
    }
    for problem in &problems {
        eprintln!("{problem}");
    }
    Err(usage(anyhow!("{} problem(s) found", problems.len())))
}

fn rules(command: RulesCommand) -> Result<(), Failure> {
    match command {
        RulesCommand::Patterns { dir } => {
            let rules = load_rules(dir.as_deref())?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for pattern in rules.patterns() {
                if writeln!(out, "{pattern}").is_err() {
                    return Ok(());
                }
            }
            let _ = out.flush();
            Ok(())
        }
        RulesCommand::Test { dir, cases } => {
            let rules = load_rules(dir.as_deref())?;
            let mut all = Vec::new();
            for path in &cases {
                all.extend(rules_tool::read_cases(path).map_err(|e| usage(anyhow!(e)))?);
            }
            let results = rules_tool::test(rules, &all);
            for gap in &results.gaps {
                println!("GAP {gap}");
            }
            for failure in &results.failures {
                println!("FAIL {failure}");
            }
            let (failed, gaps) = (results.failures.len(), results.gaps.len());
            let passed = results.checked - failed - gaps;
            println!("{passed} passed, {failed} failed, {gaps} known gap(s)");
            if failed == 0 {
                Ok(())
            } else {
                Err(Failure::Runtime(anyhow!("{failed} rule test(s) failed")))
            }
        }
        RulesCommand::Lint { dir } => {
            let rules = load_rules(dir.as_deref())?;
            let sources = match &dir {
                Some(dir) => crate::tag::rules::dir_sources(dir).map_err(usage)?,
                None => crate::tag::rules::shipped_sources(),
            };
            let mut problems = rules_tool::lint(&rules);
            problems.extend(rules_tool::lint_format(&sources));
            for problem in &problems {
                println!("{problem}");
            }
            if problems.is_empty() {
                println!("ok: {} rules", rules.rules().len());
                Ok(())
            } else {
                Err(Failure::Runtime(anyhow!("{} lint problem(s)", problems.len())))
            }
        }
    }
}

fn explain(name: &str, dir: Option<PathBuf>) -> Result<(), Failure> {
    let rules = load_rules(dir.as_deref())?;
    match rules_tool::explain(&rules, name) {
        Some(text) => {
            print!("{text}");
            Ok(())
        }
        None => Err(usage(anyhow!(
            "no category or rule named {name:?}; categories: {}",
            rules_tool::names()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// The help of every argument of `command` and its subcommands, by path.
    fn helps(command: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string);
            out.push((format!("{path} {}", arg.get_id()), help.unwrap_or_default()));
        }
        for sub in command.get_subcommands() {
            helps(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    fn help_of(id: &str) -> String {
        let mut all = Vec::new();
        helps(&Cli::command(), "kubetag", &mut all);
        all.into_iter().find(|(path, _)| path == id).map(|(_, help)| help).unwrap_or_default()
    }

    #[test]
    fn every_argument_has_a_help_text() {
        let mut all = Vec::new();
        helps(&Cli::command(), "kubetag", &mut all);
        let bare: Vec<&str> =
            all.iter().filter(|(_, help)| help.trim().is_empty()).map(|(p, _)| &**p).collect();
        assert!(bare.is_empty(), "no help: {bare:?}");
    }

    /// How the help writes each kind of input.
    fn input_form(source: &SourceConfig) -> &'static str {
        match source {
            SourceConfig::Stdin => "`stdin`",
            SourceConfig::File { .. } => "`file:PATH` or a path",
            SourceConfig::Journal(_) => "`journal`",
            SourceConfig::Tcp(_) => "`tcp://HOST:PORT`",
            SourceConfig::Kafka(_) => "`kafka://HOST:PORT",
        }
    }

    /// How the help writes each kind of output.
    fn output_form(sink: &SinkConfig) -> &'static str {
        match sink {
            SinkConfig::Stdout => "`stdout`",
            SinkConfig::File { .. } => "`file:PATH` or a path",
            SinkConfig::Tcp(_) => "`tcp://HOST:PORT`",
            SinkConfig::Http(_) => "`http://...` or `https://...`",
            SinkConfig::Kafka(_) => "`kafka://HOST:PORT",
        }
    }

    #[test]
    fn input_and_output_help_name_every_form_a_url_takes() {
        let kafka_in = "kafka://127.0.0.1:9092/journal?group=kubetag";
        let inputs = ["-", "stdin", "file:a.json", "a.json", "journal", "tcp://127.0.0.1:5170"];
        let help = help_of("kubetag inputs");
        for url in inputs.into_iter().chain([kafka_in]) {
            let source = SourceConfig::from_url(url).unwrap();
            assert!(help.contains(input_form(&source)), "{url}: {help}");
        }
        let outputs = ["-", "stdout", "file:a.json", "a.json", "tcp://127.0.0.1:5170"];
        let more =
            ["http://127.0.0.1:8080/in", "https://logs.example/in", "kafka://127.0.0.1:9092/t"];
        let help = help_of("kubetag outputs");
        for url in outputs.into_iter().chain(more) {
            let sink = SinkConfig::from_url(url).unwrap();
            assert!(help.contains(output_form(&sink)), "{url}: {help}");
        }
    }
}
