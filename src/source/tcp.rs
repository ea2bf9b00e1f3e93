//! The TCP source: newline-delimited JSON from log shippers (Fluent Bit's `tcp` output with
//! `Format json_lines`, Vector's `socket` sink with newline framing). Loopback by default,
//! a cap on connections taken before accepting, line length bounded, idle and slow peers
//! dropped, TLS when given a certificate and key (and a TLS handshake refused without).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn default_line_timeout_secs() -> u64 {
    60
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
    /// A peer that takes longer than this to finish a line it started is disconnected, so
    /// that one trickling a byte at a time cannot hold a connection slot for ever.
    #[serde(default = "default_line_timeout_secs")]
    pub line_timeout_secs: u64,
    /// PEM certificate chain and private key: with both, peers must speak TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            address: default_address(),
            max_connections: default_max_connections(),
            idle_timeout_secs: default_idle_timeout_secs(),
            line_timeout_secs: default_line_timeout_secs(),
            tls_cert_file: None,
            tls_key_file: None,
        }
    }
}

/// How often the accept loop looks for a stop while no peer connects.
const POLL: Duration = Duration::from_millis(50);

/// A bound listener, ready to accept.
pub(crate) struct TcpSource {
    listener: TcpListener,
    config: TcpConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// The TLS server configuration from the certificate and key files.
fn tls_config(config: &TcpConfig) -> io::Result<Option<Arc<rustls::ServerConfig>>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (&config.tls_cert_file, &config.tls_key_file) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => return Err(bad("tls_cert_file and tls_key_file go together".into())),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| bad(format!("{}: {e}", cert.display())))?;
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| bad(format!("{}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| bad(format!("TLS: {e}")))?;
    Ok(Some(Arc::new(server)))
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

impl TcpSource {
    pub(crate) fn bind(config: &TcpConfig) -> io::Result<TcpSource> {
        let listener = TcpListener::bind(&config.address).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.address))
        })?;
        listener.set_nonblocking(true)?;
        let tls = tls_config(config)?;
        tracing::info!(address = %listener.local_addr()?, tls = tls.is_some(), "listening");
        Ok(TcpSource { listener, config: config.clone(), tls })
    }

    /// Accepts peers until a stop, each read on a thread of its own.
    pub(crate) fn run(self, feed: Feed, stop: Stop, limits: (usize, usize)) -> io::Result<()> {
        let open = Arc::new(AtomicUsize::new(0));
        let idle = Duration::from_secs(self.config.idle_timeout_secs.max(1));
        let line = Duration::from_secs(self.config.line_timeout_secs.max(1));
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
            let (address, tls) = (peer, self.tls.clone());
            let peer = Peer { stream, address, tls, idle, line, limits, _open: guard };
            let (feed, stop) = (feed.clone(), stop.clone());
            let spawned = std::thread::Builder::new()
                .name("tcp peer".into())
                .spawn(move || serve(peer, feed, stop));
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

/// One accepted connection and how to read it.
struct Peer {
    stream: TcpStream,
    address: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    idle: Duration,
    line: Duration,
    /// Maximum line bytes and read size.
    limits: (usize, usize),
    _open: Connection,
}

fn serve(peer_conn: Peer, feed: Feed, stop: Stop) {
    let Peer {
        stream,
        address: peer,
        tls,
        idle,
        line,
        limits: (max_line_bytes, read_bytes),
        _open,
    } = peer_conn;
    tracing::debug!(%peer, "peer connected");
    let socket = match stream.set_nonblocking(false).and_then(|()| stream.try_clone()) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::warn!(error = %e, "configuring a connection");
            return;
        }
    };
    let plain = tls.is_none();
    let stream: Box<dyn Read> = match tls {
        None => Box::new(stream),
        Some(config) => match rustls::ServerConnection::new(config) {
            Ok(connection) => Box::new(rustls::StreamOwned::new(connection, stream)),
            Err(e) => {
                tracing::warn!(error = %e, "starting TLS");
                return;
            }
        },
    };
    let mut input = Paced { inner: stream, socket, idle, line, started: None, first: plain };
    let mut framer = Framer::new(max_line_bytes, read_bytes);
    let mut frames = Vec::new();
    loop {
        let n = match framer.read(&mut input, &mut frames) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                tracing::debug!(%peer, error = %e, "idle or slow peer disconnected");
                0
            }
            Err(e) => {
                // A TLS peer that is not one, or a reset: the connection ends, nothing else.
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

/// A peer's bytes, read under two clocks: `idle` for silence, `line` for a line begun and
/// not finished. The socket's read timeout is set before each read to whichever ends first.
struct Paced {
    inner: Box<dyn Read>,
    /// The same socket as `inner`'s, to set its timeout.
    socket: TcpStream,
    idle: Duration,
    line: Duration,
    /// When the line now being read began, if one is.
    started: Option<Instant>,
    /// Whether the first bytes of a plain connection are still to be checked for TLS.
    first: bool,
}

/// A TLS record of type handshake, version 3.x: what a TLS client sends first.
fn is_tls_hello(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x16 && bytes[1] == 0x03
}

impl Read for Paced {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let now = Instant::now();
        let timeout = match self.started {
            None => self.idle,
            Some(started) => {
                let left = (started + self.line).checked_duration_since(now);
                let left = left.filter(|left| !left.is_zero()).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::TimedOut, "line not finished in time")
                })?;
                left.min(self.idle)
            }
        };
        self.socket.set_read_timeout(Some(timeout))?;
        let n = self.inner.read(buf)?;
        let read = &buf[..n];
        if std::mem::take(&mut self.first) && is_tls_hello(read) {
            // None of it is a record: a TLS client is talking to a plain listener.
            return Err(io::Error::new(io::ErrorKind::InvalidData, "TLS handshake, no TLS here"));
        }
        match memchr::memrchr(b'\n', read) {
            Some(end) if end + 1 == n => self.started = None,
            Some(_) => self.started = Some(Instant::now()),
            None if n > 0 => self.started = self.started.or(Some(now)),
            None => {}
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_address_is_loopback() {
        let address: SocketAddr = TcpConfig::default().address.parse().unwrap();
        assert!(address.ip().is_loopback(), "{address}");
    }

    #[test]
    fn a_tls_client_hello_is_recognised() {
        assert!(is_tls_hello(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(!is_tls_hello(b"{\"MESSAGE\":\"x\"}"));
        assert!(!is_tls_hello(&[0x16]));
    }
}
