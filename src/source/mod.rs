//! Sources: where records come from. Each runs on its own thread, cuts its input into
//! frames and hands them to the pipeline in order.

pub(crate) mod export;
pub(crate) mod file;
pub(crate) mod journal;
pub(crate) mod kafka;
pub(crate) mod lines;
pub(crate) mod tcp;

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What a source keeps of its delivered progress (a journal cursor, Kafka offsets),
/// saved on a timer and once more when the run ends, after every sink has flushed.
pub(crate) trait Checkpoint: Send + Sync {
    fn save(&self) -> io::Result<()>;

    /// The last save, when the run ends; it may wait for the saving to be confirmed.
    fn finish(&self) -> io::Result<()> {
        self.save()
    }

    /// When the saved position last covered everything delivered so far.
    fn current_at(&self) -> std::time::Instant;
}

/// One configured source, a `[sources.NAME]` table.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceConfig {
    /// journalctl JSON lines on standard input.
    Stdin,
    /// journalctl JSON lines from a file, read to its end.
    File { path: PathBuf },
    /// The journal itself, read with `journalctl --output=export` and checkpointed.
    Journal(journal::JournalConfig),
    /// Newline-delimited JSON from log shippers over TCP.
    Tcp(tcp::TcpConfig),
    /// Journal records from Kafka topics, one a message, as a consumer-group member.
    Kafka(kafka::KafkaConfig),
}

/// A stream input, opened.
pub(crate) enum Opened {
    /// A regular file: the workers can read it themselves.
    File(File),
    /// Stdin, a pipe, a terminal or a device: read by a thread of its own, since a read
    /// may wait for ever.
    Stream(Box<dyn Read + Send>),
}

impl SourceConfig {
    /// A FILE argument: `-` is stdin, anything else a path (`file:` in front is allowed).
    pub fn from_path(path: &str) -> SourceConfig {
        match path {
            "-" => SourceConfig::Stdin,
            path => {
                let path = path.strip_prefix("file:").map_or(path, |p| p.trim_start_matches("//"));
                SourceConfig::File { path: path.into() }
            }
        }
    }

    /// Parses an `--input` value: `-` or `stdin`, `file:PATH`, or a plain path.
    pub fn from_url(url: &str) -> Result<SourceConfig, String> {
        if url == "-" || url == "stdin" {
            return Ok(SourceConfig::Stdin);
        }
        if url == "journal" {
            return Ok(SourceConfig::Journal(journal::JournalConfig::default()));
        }
        if let Some(address) = url.strip_prefix("tcp://") {
            let config = tcp::TcpConfig {
                address: address.trim_end_matches('/').to_string(),
                ..tcp::TcpConfig::default()
            };
            return Ok(SourceConfig::Tcp(config));
        }
        if let Some(path) = url.strip_prefix("file:") {
            return Ok(SourceConfig::File { path: path.trim_start_matches("//").into() });
        }
        if url.starts_with("kafka://") {
            return kafka::KafkaConfig::from_url(url).map(SourceConfig::Kafka);
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!("input scheme {scheme}:// is not supported by this build"));
        }
        Ok(SourceConfig::File { path: url.into() })
    }

    /// The `type` of the source's table.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Stdin => "stdin",
            SourceConfig::File { .. } => "file",
            SourceConfig::Journal(_) => "journal",
            SourceConfig::Tcp(_) => "tcp",
            SourceConfig::Kafka(_) => "kafka",
        }
    }

    /// A name for logs and dead-letter records.
    pub fn label(&self) -> String {
        match self {
            SourceConfig::Stdin => "stdin".into(),
            SourceConfig::File { path } => path.display().to_string(),
            SourceConfig::Journal(_) => "journal".into(),
            SourceConfig::Tcp(tcp) => format!("tcp://{}", tcp.address),
            SourceConfig::Kafka(kafka) => kafka.label(),
        }
    }

    /// Checks that the source can start, so a missing file or a directory is refused before
    /// anything runs.
    pub(crate) fn check(&self) -> io::Result<()> {
        match self {
            SourceConfig::Stdin => Ok(()),
            SourceConfig::File { path } => check_file(path),
            SourceConfig::Journal(journal) => journal.check(),
            // Bound when the pipeline starts; a bad address fails the start.
            SourceConfig::Tcp(_) => Ok(()),
            SourceConfig::Kafka(kafka) => kafka.check(),
        }
    }

    /// Opens a stream input for the pipeline: a regular file (named, or on stdin) apart,
    /// since the workers can read it themselves.
    pub(crate) fn open_stream(&self) -> io::Result<Opened> {
        let file = match self {
            SourceConfig::File { path } => File::open(path)?,
            SourceConfig::Stdin => match io::stdin().as_fd().try_clone_to_owned() {
                Ok(fd) => File::from(fd),
                Err(_) => return self.open().map(Opened::Stream),
            },
            _ => return self.open().map(Opened::Stream),
        };
        Ok(match file.metadata()?.is_file() {
            true => Opened::File(file),
            false => Opened::Stream(Box::new(file)),
        })
    }

    /// Opens a stream input.
    pub(crate) fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            SourceConfig::Stdin => Box::new(io::stdin()),
            SourceConfig::File { path } => Box::new(File::open(path)?),
            SourceConfig::Journal(_) | SourceConfig::Tcp(_) | SourceConfig::Kafka(_) => {
                return Err(io::Error::other("not a stream input"));
            }
        })
    }
}

/// A FILE input must exist and must not be a directory. Only a regular file is opened, to
/// see that it can be read: opening a FIFO waits for its writer, and closing it again would
/// lose what the writer sent; a socket or a device is left alone for the run to open once.
fn check_file(path: &Path) -> io::Result<()> {
    let kind = std::fs::metadata(path)?.file_type();
    if kind.is_dir() {
        return Err(io::Error::other("is a directory"));
    }
    if kind.is_file() {
        File::open(path)?;
    }
    Ok(())
}
