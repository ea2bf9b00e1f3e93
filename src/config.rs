//! The pipeline's configuration: `pipeline.toml`, then `KUBETAG_*` environment variables,
//! then command-line flags, each overriding the one before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::dedupe::DedupeConfig;
use crate::metrics::server::MetricsConfig;
use crate::record::{Shape, ShapeConfig};
use crate::sink::SinkConfig;
use crate::source::SourceConfig;
use crate::tag::mask::{MaskConfig, Masker};
use crate::tag::Unmatched;

/// The cores this process may run on: the default number of tagging threads.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS)
}

/// More tagging threads than this only cost memory (a few MiB each).
pub(crate) const MAX_THREADS: usize = 64;

/// The file's structure. Every table and key is optional; defaults are in `pipeline.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub rules: RulesConfig,
    #[serde(default)]
    pub tag: TagConfig,
    #[serde(default)]
    pub mask: MaskConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub run: RunConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub dedupe: DedupeConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesConfig {
    /// A directory of `*.toml` rule files replacing the shipped rules.
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagConfig {
    pub unmatched: Unmatched,
    /// Field names: a preset (journald, fluent-bit, vector) or explicit lists.
    pub shape: Option<ShapeConfig>,
}

impl Default for TagConfig {
    fn default() -> Self {
        TagConfig { unmatched: Unmatched::Drop, shape: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_line_bytes: usize,
    pub read_bytes: usize,
    pub queue_batches: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { max_line_bytes: 1 << 20, read_bytes: 256 * 1024, queue_batches: 16 }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Tagging threads; 0 means one per core.
    pub threads: usize,
    pub stats_file: Option<PathBuf>,
    /// After SIGTERM/SIGINT, how long a sink that takes nothing is waited for.
    pub shutdown_timeout_secs: u64,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig { threads: 0, stats_file: None, shutdown_timeout_secs: 10 }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    pub path: Option<PathBuf>,
}

/// A configuration problem, naming the file or variable and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {message}")]
    File { path: String, message: String },
    #[error("{key}: {message}")]
    Value { key: &'static str, message: String },
}

impl PipelineConfig {
    /// Reads `file` (if given) and the `KUBETAG_*` environment, e.g.
    /// `KUBETAG_TAG__UNMATCHED=pass` for `[tag] unmatched`.
    pub fn load(file: Option<&Path>) -> Result<PipelineConfig, ConfigError> {
        let merged = merge(file)?;
        merged.try_deserialize().map_err(|e| file_error(file, e))
    }

    /// Every problem of the file and environment, table by table, not only the first.
    pub fn problems(file: Option<&Path>) -> Vec<String> {
        let merged = match merge(file) {
            Ok(merged) => merged,
            Err(e) => return vec![e.to_string()],
        };
        if merged.clone().try_deserialize::<PipelineConfig>().is_ok() {
            return Vec::new();
        }
        let place = file.map_or_else(|| "environment".into(), |f| f.display().to_string());
        let tables: BTreeMap<String, config::Value> = match merged.try_deserialize() {
            Ok(tables) => tables,
            Err(e) => return vec![format!("config {place}: {e}")],
        };
        let mut problems = Vec::new();
        for (name, value) in tables {
            let problem = match name.as_str() {
                "rules" => check::<RulesConfig>(value),
                "tag" => check::<TagConfig>(value),
                "mask" => check::<MaskConfig>(value),
                "limits" => check::<LimitsConfig>(value),
                "run" => check::<RunConfig>(value),
                "dead_letter" => check::<DeadLetterConfig>(value),
                "metrics" => check::<MetricsConfig>(value),
                "dedupe" => check::<DedupeConfig>(value),
                "sources" => entries::<SourceConfig>(value, &name),
                "sinks" => entries::<SinkConfig>(value, &name),
                _ => Some("unknown table".into()),
            };
            if let Some(problem) = problem {
                problems.push(format!("config {place}: [{name}] {problem}"));
            }
        }
        problems
    }
}

fn check<T: serde::de::DeserializeOwned>(value: config::Value) -> Option<String> {
    value.try_deserialize::<T>().err().map(|e| e.to_string())
}

/// The named tables of `[sources]` or `[sinks]`, each checked on its own.
fn entries<T: serde::de::DeserializeOwned>(value: config::Value, kind: &str) -> Option<String> {
    let tables: BTreeMap<String, config::Value> = match value.try_deserialize() {
        Ok(tables) => tables,
        Err(e) => return Some(e.to_string()),
    };
    let problems: Vec<String> = tables
        .into_iter()
        .filter_map(|(name, table)| check::<T>(table).map(|e| format!("{kind}.{name}: {e}")))
        .collect();
    (!problems.is_empty()).then(|| problems.join("; "))
}

fn file_error(file: Option<&Path>, e: config::ConfigError) -> ConfigError {
    ConfigError::File {
        path: file.map_or_else(|| "environment".into(), |f| f.display().to_string()),
        message: e.to_string(),
    }
}

/// The file (if any) and the environment, merged.
fn merge(file: Option<&Path>) -> Result<config::Config, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        let source = config::File::from(file).format(config::FileFormat::Toml).required(true);
        builder = builder.add_source(source);
    }
    // Only KUBETAG_<TABLE>__<KEY> names are configuration: Kubernetes itself sets
    // KUBETAG_PORT and the like in pods next to a Service named kubetag.
    let vars: std::collections::HashMap<String, String> = std::env::vars()
        .filter(|(name, _)| name.strip_prefix("KUBETAG_").is_some_and(|key| key.contains("__")))
        .collect();
    let env = config::Environment::with_prefix("KUBETAG")
        .prefix_separator("_")
        .separator("__")
        .try_parsing(true)
        .source(Some(vars));
    builder.add_source(env).build().map_err(|e| file_error(file, e))
}

/// Everything a run needs, resolved from the config and the flags.
#[derive(Debug)]
pub struct Settings {
    pub rules_dir: Option<PathBuf>,
    pub unmatched: Unmatched,
    pub shape: Shape,
    /// The secret detectors of `[mask]`, built.
    pub mask: std::sync::Arc<Masker>,
    pub max_line_bytes: usize,
    pub read_bytes: usize,
    pub queue_batches: usize,
    pub threads: usize,
    pub sources: Vec<SourceConfig>,
    /// Each source's name for metrics: its `[sources.NAME]`, or its kind when given on
    /// the command line.
    pub source_names: Vec<String>,
    pub sinks: Vec<SinkConfig>,
    /// Each sink's name for metrics, like `source_names`.
    pub sink_names: Vec<String>,
    pub dead_letter: Option<PathBuf>,
    pub stats_file: Option<PathBuf>,
    /// How often sources with checkpoints save them, when anything was delivered.
    pub checkpoint_interval: std::time::Duration,
    pub shutdown_timeout: std::time::Duration,
    pub metrics: MetricsConfig,
    pub dedupe: DedupeConfig,
}

impl Settings {
    pub fn from_config(config: PipelineConfig) -> Result<Settings, ConfigError> {
        let limits = config.limits;
        let positive = |key: &'static str, value: usize| {
            if value == 0 {
                Err(ConfigError::Value { key, message: "must be greater than 0".into() })
            } else {
                Ok(value)
            }
        };
        let (mut source_names, mut sources): (Vec<String>, Vec<SourceConfig>) =
            config.sources.into_iter().unzip();
        if sources.is_empty() {
            (source_names, sources) = (vec!["stdin".into()], vec![SourceConfig::Stdin]);
        }
        let (mut sink_names, mut sinks): (Vec<String>, Vec<SinkConfig>) =
            config.sinks.into_iter().unzip();
        if sinks.is_empty() {
            (sink_names, sinks) = (vec!["stdout".into()], vec![SinkConfig::Stdout]);
        }
        config.dedupe.check().map_err(|message| ConfigError::Value { key: "dedupe", message })?;
        let checkpoint_ms = sources
            .iter()
            .filter_map(|s| match s {
                SourceConfig::Journal(j) => Some(j.checkpoint_interval_ms),
                _ => None,
            })
            .min()
            .unwrap_or(1000);
        let threads = match config.run.threads {
            0 => cores(),
            n if n > MAX_THREADS => {
                let message = format!("{n} is more than the {MAX_THREADS} a run may use");
                return Err(ConfigError::Value { key: "run.threads", message });
            }
            n => n,
        };
        Ok(Settings {
            rules_dir: config.rules.dir,
            unmatched: config.tag.unmatched,
            shape: match &config.tag.shape {
                None => Shape::journald(),
                Some(shape) => shape
                    .resolve()
                    .map_err(|message| ConfigError::Value { key: "tag.shape", message })?,
            },
            mask: Masker::new(&config.mask)
                .map(std::sync::Arc::new)
                .map_err(|e| ConfigError::Value { key: "mask", message: e.to_string() })?,
            max_line_bytes: positive("limits.max_line_bytes", limits.max_line_bytes)?,
            read_bytes: positive("limits.read_bytes", limits.read_bytes)?,
            queue_batches: positive("limits.queue_batches", limits.queue_batches)?,
            threads,
            sources,
            source_names,
            sinks,
            sink_names,
            dead_letter: config.dead_letter.path,
            stats_file: config.run.stats_file,
            checkpoint_interval: std::time::Duration::from_millis(checkpoint_ms.max(10)),
            shutdown_timeout: std::time::Duration::from_secs(config.run.shutdown_timeout_secs),
            metrics: config.metrics,
            dedupe: config.dedupe,
        })
    }
}

/// Names for sources or sinks given on the command line: their kinds, numbered from the
/// second of a kind on (`file`, `file-2`).
pub(crate) fn kind_names<'a>(kinds: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    kinds
        .map(|kind| {
            let n = seen.entry(kind).or_default();
            *n += 1;
            if *n == 1 {
                kind.to_string()
            } else {
                format!("{kind}-{n}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_pipeline_toml_loads_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml");
        let config = PipelineConfig::load(Some(&path)).unwrap();
        let shipped = Settings::from_config(config).unwrap();
        let defaults = Settings::from_config(PipelineConfig::default()).unwrap();
        assert_eq!(format!("{shipped:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn every_table_with_a_problem_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        let text = "[limits]\nmax_line_byte = 5\n[tag]\nunmatched = \"maybe\"\n\
                    [sinks.a]\ntype = \"carrier-pigeon\"\n[sinks.b]\ntype = \"stdout\"\n";
        std::fs::write(&path, text).unwrap();
        let problems = PipelineConfig::problems(Some(&path));
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("[limits]") && problems[0].contains("max_line_byte"));
        assert!(problems[1].contains("sinks.a") && problems[1].contains("carrier-pigeon"));
        assert!(problems[2].contains("[tag]") && problems[2].contains("maybe"));
    }

    #[test]
    fn more_threads_than_a_run_may_use_are_refused() {
        let mut config = PipelineConfig::default();
        config.run.threads = MAX_THREADS;
        assert_eq!(Settings::from_config(config).unwrap().threads, MAX_THREADS);
        let mut config = PipelineConfig::default();
        config.run.threads = MAX_THREADS + 1;
        let error = Settings::from_config(config).unwrap_err().to_string();
        assert!(error.starts_with("run.threads: 65 is more than"), "{error}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[limits]\nmax_line_byte = 5\n").unwrap();
        let error = PipelineConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("max_line_byte"), "{error}");
    }
}
