//! The journal source: runs `journalctl --output=export` itself, turns each entry into the
//! JSON line journalctl would print, and checkpoints the cursor of the newest entry whose
//! output every sink has delivered, so a restart goes on after it.

use std::io::{self, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;

use super::export::{write_json, Entry, ExportReader};
use super::lines::{Frame, KEPT_PREFIX_BYTES};
use crate::ack::Progress;
use crate::pipeline::{Feed, Stop};
use crate::source::Checkpoint as _;

/// The node agents' units, including the distributions that bundle them.
fn default_units() -> Vec<String> {
    [
        "kubelet",
        "containerd",
        "crio",
        "docker",
        "cri-docker",
        "k3s",
        "k3s-agent",
        "rke2-server",
        "rke2-agent",
        "snap.microk8s.daemon-kubelite",
        "snap.microk8s.daemon-containerd",
    ]
    .map(String::from)
    .to_vec()
}

fn yes() -> bool {
    true
}

fn default_journalctl() -> PathBuf {
    PathBuf::from("journalctl")
}

fn default_checkpoint_ms() -> u64 {
    1000
}

/// `[sources.NAME] type = "journal"`: what journalctl reads and where the cursor is kept.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Units to read (`journalctl -u`); empty reads everything.
    #[serde(default = "default_units")]
    pub units: Vec<String>,
    /// A journal directory (`--directory`) instead of the system journal.
    pub directory: Option<PathBuf>,
    /// Journal files (`--file`) instead of the system journal.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Interleave all available journals (`--merge`).
    #[serde(default)]
    pub merge: bool,
    /// Where to start without a checkpoint (`--since`), e.g. "-1h" or "2026-12-04 09:00".
    pub since: Option<String>,
    /// Only this boot (`--boot`), e.g. "0" or a boot id.
    pub boot: Option<String>,
    /// Keep reading new entries (`--follow`); false stops at the end of the journal.
    #[serde(default = "yes")]
    pub follow: bool,
    /// The checkpoint: the cursor of the newest delivered entry, written atomically.
    pub state_file: Option<PathBuf>,
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_interval_ms: u64,
    /// The journalctl binary.
    #[serde(default = "default_journalctl")]
    pub journalctl: PathBuf,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            units: default_units(),
            directory: None,
            files: Vec::new(),
            merge: false,
            since: None,
            boot: None,
            follow: true,
            state_file: None,
            checkpoint_interval_ms: default_checkpoint_ms(),
            journalctl: default_journalctl(),
        }
    }
}

/// Bytes of JSON lines gathered into one frame before it is handed on.
const FRAME_BYTES: usize = 256 * 1024;

impl JournalConfig {
    /// journalctl's arguments, going on after `cursor` when there is one.
    fn args(&self, cursor: Option<&str>) -> Vec<String> {
        let mut args: Vec<String> =
            ["--output=export", "--all", "--no-pager"].map(String::from).into();
        if self.follow {
            // --follow alone starts at the last ten entries, even after a cursor.
            args.push("--follow".into());
            args.push("--lines=all".into());
        }
        for unit in &self.units {
            args.push(format!("--unit={unit}"));
        }
        if let Some(dir) = &self.directory {
            args.push(format!("--directory={}", dir.display()));
        }
        for file in &self.files {
            args.push(format!("--file={}", file.display()));
        }
        if self.merge {
            args.push("--merge".into());
        }
        if let Some(boot) = &self.boot {
            args.push(format!("--boot={boot}"));
        }
        match (cursor, &self.since) {
            (Some(cursor), _) => args.push(format!("--after-cursor={cursor}")),
            (None, Some(since)) => args.push(format!("--since={since}")),
            (None, None) => {}
        }
        args
    }

    /// Starts journalctl over the selection, its export stream on a pipe.
    pub(crate) fn spawn(&self, cursor: Option<&str>) -> io::Result<Child> {
        Command::new(&self.journalctl)
            .args(self.args(cursor))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run journalctl: {e}")))
    }

    /// Checks that journalctl exists, before anything runs (without running it: it may be a
    /// wrapper with effects of its own).
    pub(crate) fn check(&self) -> io::Result<()> {
        let program = &self.journalctl;
        let found = if program.components().count() > 1 {
            program.is_file()
        } else {
            std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(program).is_file())
            })
        };
        if found {
            Ok(())
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, format!("{} not found", program.display())))
        }
    }
}

/// The cursor saved in the state file.
pub(crate) fn read_checkpoint(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let value: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok(value["cursor"].as_str().map(str::to_string))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the state file's directory takes files, so a run does not learn it at the end.
fn writable(path: &Path) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let probe = dir.join(format!(".kubetag-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(probe)
}

/// Writes the state file so that a crash leaves either the old or the new one.
pub(crate) fn write_checkpoint(path: &Path, cursor: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    let state = serde_json::json!({ "cursor": cursor });
    file.write_all(state.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The source's checkpoint: delivered progress, and where it is saved.
pub(crate) struct CursorCheckpoint {
    progress: Arc<Progress>,
    path: Option<PathBuf>,
    saved: std::sync::Mutex<Option<String>>,
    /// When the state file last held everything delivered so far.
    current_at: std::sync::Mutex<Instant>,
}

impl super::Checkpoint for CursorCheckpoint {
    /// Saves the committed cursor if it moved.
    fn save(&self) -> io::Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let Some(cursor) = self.progress.committed() else { return Ok(()) };
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        // Current once written, or when nothing is in flight: a quiet journal's state
        // file stays current, one held back by a failed delivery ages.
        let current = if saved.as_deref() != Some(&cursor) {
            write_checkpoint(path, &cursor)?;
            *saved = Some(cursor);
            true
        } else {
            self.progress.settled()
        };
        if current {
            *self.current_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        Ok(())
    }

    fn current_at(&self) -> Instant {
        *self.current_at.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs the journal source until journalctl ends (without follow) or `stop` is asked.
pub(crate) struct JournalSource {
    config: JournalConfig,
    max_entry_bytes: usize,
    checkpoint: Arc<CursorCheckpoint>,
}

impl JournalSource {
    pub(crate) fn new(config: &JournalConfig, max_entry_bytes: usize) -> io::Result<Self> {
        let path = config.state_file.clone();
        let start = match &path {
            Some(path) => read_checkpoint(path).and_then(|cursor| writable(path).map(|()| cursor)),
            None => Ok(None),
        };
        let start = start.map_err(|e| {
            let path = path.as_deref().unwrap_or(Path::new("")).display();
            io::Error::new(e.kind(), format!("journal state file {path}: {e}"))
        })?;
        let checkpoint = Arc::new(CursorCheckpoint {
            progress: Arc::new(Progress::default()),
            path,
            saved: std::sync::Mutex::new(start),
            current_at: std::sync::Mutex::new(Instant::now()),
        });
        Ok(JournalSource { config: config.clone(), max_entry_bytes, checkpoint })
    }

    pub(crate) fn checkpoint(&self) -> Arc<CursorCheckpoint> {
        self.checkpoint.clone()
    }

    pub(crate) fn run(self, feed: Feed, stop: Stop) -> io::Result<()> {
        let mut cursor = self.checkpoint.saved.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut backoff = Duration::from_secs(1);
        let mut warned = false;
        let mut last_save = Instant::now();
        loop {
            let mut child = self.spawn(cursor.as_deref())?;
            let started = Instant::now();
            let outcome = self.pump(&mut child, &feed, &stop, &mut cursor, &mut last_save);
            let _ = child.kill();
            let status = child.wait()?;
            match outcome {
                Ok(Pump::Stopped) => return Ok(()),
                Ok(Pump::Ended) if !self.config.follow => {
                    return if status.success() {
                        Ok(())
                    } else {
                        Err(io::Error::other(format!("journalctl failed: {status}")))
                    };
                }
                Ok(Pump::Ended) => {}
                Err(e) => tracing::warn!(error = %e, "reading journalctl"),
            }

            // journalctl went away while following: start it again after the last entry
            // read, waiting longer each time it fails quickly, and say so once per outage.
            // A journalctl that ran a while ends an outage: the next one is said again.
            if started.elapsed() > Duration::from_secs(60) {
                (backoff, warned) = (Duration::from_secs(1), false);
            }
            if !warned {
                let retry_secs = backoff.as_secs();
                tracing::warn!(%status, retry_secs, "journalctl exited, restarting it");
                warned = true;
            }
            if sleep_unless_stopped(backoff, &stop) {
                return Ok(());
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn spawn(&self, cursor: Option<&str>) -> io::Result<Child> {
        self.config.spawn(cursor)
    }

    /// Reads entries until journalctl's output ends or a stop is asked.
    fn pump(
        &self,
        child: &mut Child,
        feed: &Feed,
        stop: &Stop,
        cursor: &mut Option<String>,
        last_save: &mut Instant,
    ) -> Result<Pump, super::export::ExportError> {
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut reader =
            ExportReader::new(BufReader::with_capacity(1 << 20, stdout), self.max_entry_bytes);
        let mut entry = Entry::default();
        let mut lines = Vec::with_capacity(FRAME_BYTES + 4096);
        let interval = Duration::from_millis(self.config.checkpoint_interval_ms);
        loop {
            let more = reader.next(&mut entry)?;
            if more {
                if let Some(c) = entry.get(b"__CURSOR") {
                    *cursor = Some(String::from_utf8_lossy(c).into_owned());
                }
                if entry.oversize {
                    self.send(feed, &mut lines, cursor);
                    let prefix = Bytes::from(format!("journal entry of {} bytes", entry.bytes));
                    let prefix = prefix.slice(..prefix.len().min(KEPT_PREFIX_BYTES));
                    // Counted as the JSON line it stands for: its size, then a newline.
                    let len = entry.bytes as u64;
                    let frame = Frame::Oversize { prefix, len, taken: len + 1 };
                    feed.send(
                        frame,
                        Some(self.checkpoint.progress.ack(cursor.clone().unwrap_or_default())),
                    );
                } else {
                    write_json(&entry, &mut lines);
                }
            }
            // Hand on a full frame, or whatever there is when journalctl has nothing more
            // for now, so a followed journal's entries come through at once.
            let ready = lines.len() >= FRAME_BYTES || !more || reader.drained();
            if ready && !self.send(feed, &mut lines, cursor) {
                return Ok(Pump::Stopped);
            }
            if last_save.elapsed() >= interval {
                *last_save = Instant::now();
                if let Err(e) = self.checkpoint.save() {
                    tracing::warn!(error = %e, "cannot write the journal checkpoint");
                }
            }
            if stop.requested() {
                return Ok(Pump::Stopped);
            }
            if !more {
                return Ok(Pump::Ended);
            }
        }
    }

    /// Sends the gathered lines as one frame; false once the pipeline takes no more.
    fn send(&self, feed: &Feed, lines: &mut Vec<u8>, cursor: &Option<String>) -> bool {
        if lines.is_empty() {
            return true;
        }
        let frame = Frame::Lines(Bytes::from(std::mem::take(lines)));
        lines.reserve(FRAME_BYTES + 4096);
        let ack = self.checkpoint.progress.ack(cursor.clone().unwrap_or_default());
        feed.send(frame, Some(ack))
    }
}

enum Pump {
    Ended,
    Stopped,
}

/// Sleeps, waking early for a stop; true if stopped.
fn sleep_unless_stopped(total: Duration, stop: &Stop) -> bool {
    let until = Instant::now() + total;
    while Instant::now() < until {
        if stop.requested() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.requested()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_follow_the_selection_and_the_cursor() {
        let config = JournalConfig {
            units: vec!["kubelet".into()],
            files: vec!["/x.journal".into()],
            since: Some("-1h".into()),
            ..JournalConfig::default()
        };
        let args = config.args(None);
        assert!(args.contains(&"--output=export".to_string()));
        assert!(args.contains(&"--follow".to_string()));
        assert!(args.contains(&"--unit=kubelet".to_string()));
        assert!(args.contains(&"--file=/x.journal".to_string()));
        assert!(args.contains(&"--since=-1h".to_string()));
        let args = config.args(Some("s=1"));
        assert!(args.contains(&"--after-cursor=s=1".to_string()));
        assert!(!args.iter().any(|a| a.starts_with("--since")));
    }

    #[test]
    fn checkpoints_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(read_checkpoint(&path).unwrap(), None);
        write_checkpoint(&path, "s=abc;i=1").unwrap();
        write_checkpoint(&path, "s=abc;i=2").unwrap();
        assert_eq!(read_checkpoint(&path).unwrap().as_deref(), Some("s=abc;i=2"));
        assert!(!path.with_extension("tmp").exists());
    }
}
