//! The TCP sink: JSON lines over one TCP connection, reconnecting with backoff when the
//! peer is down or the connection breaks, and resending the batch that was being written.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::Deserialize;

use super::retry::{positive, GaveUp, Retry};
use super::Batch;

fn default_max_backoff_ms() -> u64 {
    5000
}

fn default_connect_timeout_ms() -> u64 {
    5000
}

fn default_write_timeout_ms() -> u64 {
    10_000
}

/// `[sinks.NAME] type = "tcp"`: where to connect and how patiently.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// `HOST:PORT`; the host is resolved again on every connection.
    pub address: Address,
    #[serde(default = "default_max_backoff_ms", deserialize_with = "positive")]
    pub max_backoff_ms: u64,
    #[serde(default = "default_connect_timeout_ms", deserialize_with = "positive")]
    pub connect_timeout_ms: u64,
    /// A peer that takes no bytes for this long counts as gone: the batch is resent on a
    /// new connection.
    #[serde(default = "default_write_timeout_ms", deserialize_with = "positive")]
    pub write_timeout_ms: u64,
}

impl TcpConfig {
    pub fn new(address: Address) -> TcpConfig {
        TcpConfig {
            address,
            max_backoff_ms: default_max_backoff_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            write_timeout_ms: default_write_timeout_ms(),
        }
    }
}

/// A `HOST:PORT` checked when the configuration is read, so a typo is a usage error
/// rather than a sink that retries forever.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct Address(String);

impl TryFrom<String> for Address {
    type Error = String;

    fn try_from(address: String) -> Result<Address, String> {
        let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(format!("tcp address {address:?} is not HOST:PORT"));
        }
        Ok(Address(address))
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Delivers every batch from the queue, in order, each at least once.
pub(crate) fn run(
    config: TcpConfig,
    sink: String,
    batches: flume::Receiver<Batch>,
) -> io::Result<()> {
    let mut peer = Peer { config, stream: None, connections: 0 };
    let mut retry = Retry::new(&sink, peer.config.max_backoff_ms);
    while let Ok(batch) = batches.recv() {
        if let Err(gave_up) = deliver(&mut peer, &mut retry, &batch, &batches) {
            return Err(gave_up.fail(&sink, &[batch], &batches).into());
        }
        // Written to the socket: dropping the batch releases its acknowledgement.
    }
    Ok(())
}

fn deliver(
    peer: &mut Peer,
    retry: &mut Retry,
    batch: &Batch,
    batches: &flume::Receiver<Batch>,
) -> Result<(), GaveUp> {
    loop {
        match peer.send(&batch.bytes) {
            Ok(()) => {
                retry.succeeded();
                return Ok(());
            }
            Err(e) => retry.failed(&e.to_string(), None, batches)?,
        }
    }
}

/// The connection, made when there is something to send.
struct Peer {
    config: TcpConfig,
    stream: Option<TcpStream>,
    connections: u64,
}

impl Peer {
    /// Writes a whole batch; on an error the connection is dropped, and the caller sends the
    /// batch again from its start on the next one.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.connected()?;
        let written = stream.write_all(bytes).and_then(|()| stream.flush());
        if written.is_err() {
            self.stream = None;
        }
        written
    }

    fn connected(&mut self) -> io::Result<&mut TcpStream> {
        let stream = match self.stream.take() {
            Some(stream) if still_open(&stream) => stream,
            Some(_) => {
                tracing::debug!(address = %self.config.address, "tcp peer closed the connection");
                self.connect()?
            }
            None => self.connect()?,
        };
        Ok(self.stream.insert(stream))
    }

    fn connect(&mut self) -> io::Result<TcpStream> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let address = &self.config.address;
        let stream = connect_any(address.0.to_socket_addrs()?, timeout)?;
        stream.set_write_timeout(Some(Duration::from_millis(self.config.write_timeout_ms)))?;
        // Batches are written whole; Nagle would only hold back a followed journal's lines.
        stream.set_nodelay(true)?;
        self.connections += 1;
        if self.connections == 1 {
            tracing::info!(address = %address, "tcp sink connected");
        } else {
            tracing::debug!(address = %address, connections = self.connections, "tcp reconnected");
        }
        Ok(stream)
    }
}

/// Tries each address the host resolves to, as a client should with several A records.
fn connect_any(
    addresses: impl Iterator<Item = SocketAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let mut last = None;
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "resolves to no address")))
}

/// Reads at most this many times what a peer sent us before judging it alive.
const MAX_DISCARD_READS: usize = 16;

/// Whether the peer is still there. A peer that closed while we were idle has sent a FIN:
/// a write would still succeed into our kernel's buffer and its bytes be lost, so look for
/// the FIN before writing. Bytes the peer sends are not part of the protocol and dropped.
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut scratch = [0u8; 4096];
    let mut open = true;
    for _ in 0..MAX_DISCARD_READS {
        match (&*stream).read(&mut scratch) {
            Ok(0) => open = false,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => open = e.kind() == io::ErrorKind::WouldBlock,
        }
        break;
    }
    open && stream.set_nonblocking(false).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_need_a_host_and_a_port() {
        for good in ["127.0.0.1:9000", "logs.example:1", "[::1]:9000"] {
            assert!(Address::try_from(good.to_string()).is_ok(), "{good}");
        }
        for bad in ["127.0.0.1", ":9000", "host:0", "host:http", "host:70000", ""] {
            assert!(Address::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_batch_whose_write_timed_out_is_sent_whole_on_a_new_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = Address(listener.local_addr().unwrap().to_string());
        let config = TcpConfig { write_timeout_ms: 200, ..TcpConfig::new(address) };
        // More than loopback's socket buffers hold, so a peer that never reads stalls it.
        let bytes: Vec<u8> = b"{\"n\":1}\n".repeat(4 << 20);
        let server = std::thread::spawn(move || {
            let (stalled, _) = listener.accept().unwrap();
            let (mut second, _) = listener.accept().unwrap();
            drop(stalled);
            let mut got = Vec::new();
            second.read_to_end(&mut got).unwrap();
            got
        });
        let (queue, batches) = flume::bounded::<Batch>(1);
        let batch = std::sync::Arc::new(super::super::Output {
            bytes: bytes.clone(),
            ack: None,
            records: Vec::new(),
        });
        let mut peer = Peer { config, stream: None, connections: 0 };
        let mut retry = Retry::new("test", 100);
        deliver(&mut peer, &mut retry, &batch, &batches).unwrap();
        assert_eq!(peer.connections, 2);
        drop((peer, queue));
        assert!(server.join().unwrap() == bytes, "the whole batch, once, on the second");
    }

    #[test]
    fn a_closed_peer_is_seen_before_writing() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (&accepted).write_all(b"ignored\n").unwrap();
        // A blocking peek returns once the bytes (later, the FIN) are there.
        assert!(stream.peek(&mut [0; 8]).unwrap() > 0);
        assert!(still_open(&stream), "bytes from the peer are dropped, not an end");
        drop(accepted);
        assert_eq!(stream.peek(&mut [0; 8]).unwrap(), 0);
        assert!(!still_open(&stream));
    }
}
