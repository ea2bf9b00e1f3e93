//! Sinks: where tagged records go. Each runs on its own thread behind a bounded queue, so
//! a slow sink pushes back on the pipeline instead of growing memory.

pub(crate) mod http;
pub(crate) mod kafka;
mod retry;
pub(crate) use retry::count_records;
pub(crate) mod tcp;

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Deserialize;

use crate::ack::Ack;
use crate::metrics::SinkCounters;
use crate::tag::route::Routed;

/// A sink's delivery counters, shared with the metrics.
pub(crate) type Counters = Arc<SinkCounters>;

/// One configured sink, a `[sinks.NAME]` table.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkConfig {
    /// JSON lines on standard output.
    Stdout,
    /// JSON lines appended to a file.
    File { path: PathBuf },
    /// JSON lines over TCP, reconnecting when the peer is down.
    Tcp(tcp::TcpConfig),
    /// JSON lines POSTed over HTTP, combined into requests and retried.
    Http(http::HttpConfig),
    /// One Kafka message a record, on topics named from the record's facts.
    Kafka(kafka::KafkaSinkConfig),
}

impl SinkConfig {
    /// Parses an `--output` value: `-` or `stdout`, `file:PATH`, `tcp://HOST:PORT`,
    /// `http://...` or `https://...`, or a plain path.
    pub fn from_url(url: &str) -> Result<SinkConfig, String> {
        if url == "-" || url == "stdout" {
            return Ok(SinkConfig::Stdout);
        }
        if let Some(path) = url.strip_prefix("file:") {
            return Ok(SinkConfig::File { path: path.trim_start_matches("//").into() });
        }
        if let Some(address) = url.strip_prefix("tcp://") {
            let address = tcp::Address::try_from(address.trim_end_matches('/').to_string())?;
            return Ok(SinkConfig::Tcp(tcp::TcpConfig::new(address)));
        }
        if url.starts_with("kafka://") {
            return kafka::KafkaSinkConfig::from_url(url).map(SinkConfig::Kafka);
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            let url = http::Endpoint::try_from(url.to_string())?;
            return Ok(SinkConfig::Http(http::HttpConfig::new(url)));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(format!("output scheme {scheme}:// is not supported by this build"));
        }
        Ok(SinkConfig::File { path: url.into() })
    }

    /// Checks what can be checked before a run: a Kafka sink's properties, the directory
    /// of a file output.
    pub(crate) fn check(&self) -> io::Result<()> {
        match self {
            SinkConfig::Kafka(config) => config.producer(Counters::default()).map(|_| ()),
            SinkConfig::File { path } => check_writable(path),
            _ => Ok(()),
        }
    }

    /// Whether the sink needs each record's facts ([`Routed`]) beside its bytes.
    pub(crate) fn routes(&self) -> bool {
        matches!(self, SinkConfig::Kafka(_))
    }

    /// The `type` of the sink's table.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Stdout => "stdout",
            SinkConfig::File { .. } => "file",
            SinkConfig::Tcp(_) => "tcp",
            SinkConfig::Http(_) => "http",
            SinkConfig::Kafka(_) => "kafka",
        }
    }

    pub fn label(&self) -> String {
        match self {
            SinkConfig::Stdout => "stdout".into(),
            SinkConfig::File { path } => path.display().to_string(),
            SinkConfig::Tcp(tcp) => format!("tcp://{}", tcp.address),
            SinkConfig::Http(http) => http.url.label(),
            SinkConfig::Kafka(kafka) => kafka.label(),
        }
    }

    /// What the sink's thread runs: file-like sinks get their writer opened here, so a
    /// path that cannot be opened stops the run before it starts.
    fn runner(&self, batches: flume::Receiver<Batch>, counters: Counters) -> io::Result<Runner> {
        Ok(match self {
            SinkConfig::Stdout => {
                let writer = Box::new(io::stdout());
                Box::new(move || write_batches(batches, writer, &counters))
            }
            SinkConfig::File { path } => {
                // Opened by the sink's thread: a FIFO's open waits for its reader, and the
                // run must go on (and see a stop) meanwhile.
                let path = path.clone();
                Box::new(move || write_batches(batches, Box::new(append(&path)?), &counters))
            }
            SinkConfig::Tcp(config) => {
                let (config, label) = (config.clone(), self.label());
                Box::new(move || tcp::run(config, label, batches, &counters))
            }
            SinkConfig::Http(config) => {
                let client = http::Client::new(config);
                Box::new(move || http::run(client, batches, &counters))
            }
            SinkConfig::Kafka(config) => {
                let (config, producer) = (config.clone(), config.producer(counters)?);
                Box::new(move || kafka::run(config, producer, batches))
            }
        })
    }
}

pub(crate) fn append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Whole output lines from one frame, shared by every sink. The frame's ack is released
/// when the last sink lets go of the batch after delivering it.
pub(crate) struct Output {
    pub(crate) bytes: Vec<u8>,
    /// Each line's end and facts, when a sink or stage asked for them; else empty.
    pub(crate) records: Vec<Routed>,
    pub(crate) ack: Option<Ack>,
}

impl Output {
    /// Marks the frame as not delivered, so its source does not checkpoint past it.
    pub(crate) fn fail(&self) {
        if let Some(ack) = &self.ack {
            ack.fail();
        }
    }
}

pub(crate) type Batch = Arc<Output>;

/// A sink's body, run on its own thread until its queue closes.
type Runner = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// A running sink: its queue and its thread.
pub(crate) struct Sink {
    pub(crate) label: String,
    pub(crate) queue: flume::Sender<Batch>,
    pub(crate) thread: JoinHandle<io::Result<()>>,
    pub(crate) is_stdout: bool,
    pub(crate) counters: Counters,
}

/// Output buffered this much before a write; flushed sooner whenever the queue is empty,
/// so a followed journal's lines appear at once.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

impl Sink {
    pub(crate) fn start(
        config: &SinkConfig,
        queue_batches: usize,
        counters: Counters,
    ) -> io::Result<Sink> {
        let (queue, batches) = flume::bounded::<Batch>(queue_batches);
        counters.watch_queue(&queue);
        let label = config.label();
        let runner = config
            .runner(batches, counters.clone())
            .map_err(|e| io::Error::new(e.kind(), format!("output {label}: {e}")))?;
        let thread = std::thread::Builder::new().name(format!("sink {label}")).spawn(runner)?;
        let is_stdout = *config == SinkConfig::Stdout;
        Ok(Sink { label, queue, thread, is_stdout, counters })
    }
}

/// Batches held for their flush at most, in bytes: past this the sink flushes even though
/// more batches are waiting, so a queue that never empties cannot hold the whole input.
const HELD_BYTES: usize = 4 * WRITE_BUFFER_BYTES;

/// Writes batches, holding each until the flush that makes it durable; on a failure every
/// batch not yet flushed, and every later one, is marked undelivered.
fn write_batches(
    batches: flume::Receiver<Batch>,
    writer: Box<dyn Write + Send>,
    counters: &SinkCounters,
) -> io::Result<()> {
    let writer = CountingWriter { inner: writer, counters };
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, writer);
    let mut unflushed: Vec<Batch> = Vec::new();
    let result = (|| {
        let mut held = 0;
        while let Ok(batch) = batches.recv() {
            writer.write_all(&batch.bytes)?;
            held += batch.bytes.len();
            unflushed.push(batch);
            if batches.is_empty() || held >= HELD_BYTES {
                writer.flush()?;
                unflushed.clear();
                held = 0;
            }
        }
        writer.flush()?;
        unflushed.clear();
        Ok(())
    })();
    if result.is_err() {
        // Lines written whole before the failure were delivered; the rest is lost.
        unflushed.drain(..).chain(batches.drain()).for_each(|b| b.fail());
        counters.failed(counters.undelivered());
    }
    result
}

/// Counts each line as sent once its newline is written, so that what a stalled or
/// failed sink did deliver is known to the line.
struct CountingWriter<'a> {
    inner: Box<dyn Write + Send>,
    counters: &'a SinkCounters,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.counters.abandoned() {
            return Err(io::Error::other("given up at the shutdown timeout"));
        }
        let written = self.inner.write(buf)?;
        self.counters.sent(memchr::memchr_iter(b'\n', &buf[..written]).count() as u64);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where opening `path` to append makes the file when there is none: its path (a dangling
/// link's target) and the directory that path is in (`.` for a bare name).
pub(crate) fn place_of_new_file(path: &std::path::Path) -> (PathBuf, PathBuf) {
    let file = match std::fs::read_link(path) {
        Ok(target) => path.parent().unwrap_or(std::path::Path::new("")).join(target),
        Err(_) => path.to_path_buf(),
    };
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    (file, directory)
}

/// A file output must be a file the run can open to append: not a directory, not a name
/// ending in `/`, in a directory that is there and lets it create the file (through a
/// dangling link, the link's target is the file). A wrong path is refused before the run,
/// without creating anything (`kubetag check` runs this too).
pub(crate) fn check_writable(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let fail = |message: String| Err(io::Error::other(message));
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return fail("an empty path".into());
    }
    if path.is_dir() {
        return fail(format!("{shown} is a directory"));
    }
    if path.as_os_str().as_bytes().ends_with(b"/") {
        return fail(format!("{shown} ends in /: it names a directory, not a file"));
    }
    let access = rustix::fs::Access::WRITE_OK;
    if std::fs::metadata(path).is_ok() {
        return rustix::fs::access(path, access)
            .map_err(|e| io::Error::other(format!("{shown} cannot be written: {e}")));
    }
    let (_, directory) = place_of_new_file(path);
    let directory = directory.as_path();
    match std::fs::metadata(directory) {
        Ok(metadata) if metadata.is_dir() => {
            rustix::fs::access(directory, access | rustix::fs::Access::EXEC_OK).map_err(|e| {
                io::Error::other(format!("cannot create {shown} in {}: {e}", directory.display()))
            })
        }
        Ok(_) => fail(format!("{} is not a directory", directory.display())),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", directory.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts flushes, and the bytes written by the time of each.
    #[derive(Clone, Default)]
    struct Recorder(Arc<std::sync::Mutex<(usize, Vec<usize>)>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().0 += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            let mut state = self.0.lock().unwrap();
            let written = state.0;
            state.1.push(written);
            Ok(())
        }
    }

    #[test]
    fn a_queue_that_never_empties_still_flushes_and_lets_batches_go() {
        let line = vec![b'x'; 1023].into_iter().chain([b'\n']).collect::<Vec<u8>>();
        let batch_bytes: Vec<u8> = line.repeat(64);
        let (queue, batches) = flume::unbounded::<Batch>();
        // Everything is queued before the sink starts: it never finds the queue empty
        // until the last batch.
        let total = 5 * HELD_BYTES / batch_bytes.len();
        for _ in 0..total {
            let output = Output { bytes: batch_bytes.clone(), records: Vec::new(), ack: None };
            queue.send(Arc::new(output)).unwrap();
        }
        drop(queue);
        let recorder = Recorder::default();
        let counters = SinkCounters::default();
        write_batches(batches, Box::new(recorder.clone()), &counters).unwrap();

        let (written, flushes) = recorder.0.lock().unwrap().clone();
        assert_eq!(written, total * batch_bytes.len());
        assert!(flushes.len() >= 5, "flushed only at {flushes:?}");
        assert!(flushes.windows(2).all(|w| w[1] - w[0] <= HELD_BYTES + batch_bytes.len()));
        assert_eq!(counters.totals().0, (total * 64) as u64, "every record counted sent");
    }
}
