//! The TCP source: newline-delimited JSON from log shippers (Fluent Bit's `tcp` output with
//! `Format json_lines`, Vector's `socket` sink with newline framing). Loopback by default,
//! a cap on connections taken before accepting, line length bounded, idle peers dropped.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::lines::Framer;
use crate::pipeline::{Feed, Stop};

fn default_address() -> String {
    "127.0.0.1:5170".into()
}

fn default_max_connections() -> usize {
    64
}

fn default_idle_timeout_secs() -> u64 {
    300
}

/// `[sources.NAME] type = "tcp"`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// Where to listen; loopback unless told otherwise.
    #[serde(default = "default_address")]
    pub address: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A peer that sends nothing for this long is disconnected.
    #[serde(default = "default_idle_timeout_secs")]
    pub idle_timeout_secs: u64,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            address: default_address(),
            max_connections: default_max_connections(),
            idle_timeout_secs: default_idle_timeout_secs(),
        }
    }
}

/// How often the accept loop looks for a stop while no peer connects.
const POLL: Duration = Duration::from_millis(50);

/// A bound listener, ready to accept.
pub(crate) struct TcpSource {
    listener: TcpListener,
    config: TcpConfig,
}

impl TcpSource {
    pub(crate) fn bind(config: &TcpConfig) -> io::Result<TcpSource> {
        let listener = TcpListener::bind(&config.address).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.address))
        })?;
        listener.set_nonblocking(true)?;
        tracing::info!(address = %listener.local_addr()?, "listening");
        Ok(TcpSource { listener, config: config.clone() })
    }

    /// Accepts peers until a stop, each read on a thread of its own.
    pub(crate) fn run(self, feed: Feed, stop: Stop, limits: (usize, usize)) -> io::Result<()> {
        let open = Arc::new(AtomicUsize::new(0));
        let idle = Duration::from_secs(self.config.idle_timeout_secs.max(1));
        while !stop.requested() {
            // The cap is taken before accepting: peers over it wait in the backlog.
            if open.load(Ordering::SeqCst) >= self.config.max_connections {
                std::thread::sleep(POLL);
                continue;
            }
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection");
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            open.fetch_add(1, Ordering::SeqCst);
            let guard = Connection(open.clone());
            let (feed, stop) = (feed.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("tcp peer".into())
                .spawn(move || serve(stream, peer, idle, feed, stop, limits, guard));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a connection thread");
            }
        }
        Ok(())
    }
}

/// Counts an open connection for as long as it lives.
struct Connection(Arc<AtomicUsize>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    idle: Duration,
    feed: Feed,
    stop: Stop,
    (max_line_bytes, read_bytes): (usize, usize),
    _open: Connection,
) {
    tracing::debug!(%peer, "peer connected");
    if let Err(e) = stream.set_nonblocking(false).and_then(|()| stream.set_read_timeout(Some(idle)))
    {
        tracing::warn!(error = %e, "configuring a connection");
        return;
    }
    let mut framer = Framer::new(max_line_bytes, read_bytes);
    let mut frames = Vec::new();
    let mut input: &TcpStream = &stream;
    loop {
        let n = match framer.read(&mut input as &mut dyn Read, &mut frames) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                tracing::debug!(%peer, "idle peer disconnected");
                0
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "peer connection failed");
                0
            }
        };
        if n == 0 {
            framer.finish(&mut frames);
        }
        for frame in frames.drain(..) {
            if !feed.send(frame, None) {
                return;
            }
        }
        if n == 0 || stop.requested() {
            return;
        }
    }
}
