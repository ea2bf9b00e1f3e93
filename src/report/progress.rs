//! A progress line on stderr while a large input is read, only when stderr is a terminal.
//!
//! Nothing is printed during the first second, so small inputs and pipes stay quiet.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

pub(crate) struct Progress {
    enabled: bool,
    started: Instant,
    last: Option<Instant>,
    bytes: u64,
    records: u64,
}

impl Progress {
    const QUIET_FOR: Duration = Duration::from_secs(1);
    const EVERY: Duration = Duration::from_millis(250);

    /// On when stderr is a terminal.
    pub(crate) fn for_stderr() -> Progress {
        Progress { enabled: std::io::stderr().is_terminal(), ..Progress::off() }
    }

    pub(crate) fn off() -> Progress {
        Progress { enabled: false, started: Instant::now(), last: None, bytes: 0, records: 0 }
    }

    pub(crate) fn advance(&mut self, bytes: u64, records: u64) {
        self.bytes += bytes;
        self.records += records;
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        let due = self.last.map_or(Self::QUIET_FOR, |_| Self::EVERY);
        if now.duration_since(self.last.unwrap_or(self.started)) < due {
            return;
        }
        self.last = Some(now);
        let seconds = now.duration_since(self.started).as_secs_f64();
        let mib = self.bytes as f64 / (1024.0 * 1024.0);
        let rate = mib / seconds.max(0.001);
        let line = format!(
            "\r\x1b[2Kkubetag report: {mib:.1} MiB, {} records read ({rate:.0} MiB/s)",
            self.records
        );
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// Clears the line, so the report is not printed after it.
    pub(crate) fn finish(&mut self) {
        if self.last.take().is_some() {
            let _ = std::io::stderr().write_all(b"\r\x1b[2K");
        }
    }
}
