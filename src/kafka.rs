//! What the Kafka source and sink share: their address form, client settings, and how a
//! client's trouble with its brokers is logged.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};

/// The parts of `kafka://HOST:PORT[,HOST:PORT]/PATH?KEY=VALUE&...`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct KafkaUrl {
    pub(crate) brokers: String,
    pub(crate) path: String,
    pub(crate) query: BTreeMap<String, String>,
}

impl KafkaUrl {
    pub(crate) fn parse(url: &str) -> Result<KafkaUrl, String> {
        let rest = url.strip_prefix("kafka://").ok_or_else(|| format!("{url}: not kafka://"))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (brokers, path) = rest.split_once('/').unwrap_or((rest, ""));
        if brokers.is_empty() || brokers.split(',').any(|b| !b.contains(':')) {
            return Err(format!("{url}: brokers must be HOST:PORT[,HOST:PORT]"));
        }
        if path.is_empty() {
            return Err(format!("{url}: no topic after the brokers"));
        }
        let mut pairs = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) =
                pair.split_once('=').ok_or_else(|| format!("{url}: {pair:?} is not KEY=VALUE"))?;
            pairs.insert(key.to_string(), value.to_string());
        }
        Ok(KafkaUrl { brokers: brokers.into(), path: path.into(), query: pairs })
    }
}

/// A librdkafka configuration: kubetag's defaults, then the user's properties, which win.
pub(crate) fn client_config(
    brokers: &str,
    defaults: &[(&str, &str)],
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in properties {
        config.set(key, value);
    }
    // librdkafka's own log lines are detail; kubetag logs what they mean.
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// Tracks a client's trouble with its brokers, so an outage is logged once when it starts,
/// summarised while it lasts, and once more when it ends, never once a record.
pub(crate) struct Outage {
    role: &'static str,
    state: Mutex<OutageState>,
}

#[derive(Default)]
struct OutageState {
    since: Option<Instant>,
    errors: u64,
    last_summary: Option<Instant>,
}

impl Outage {
    const SUMMARY_EVERY: Duration = Duration::from_secs(30);

    pub(crate) fn new(role: &'static str) -> Outage {
        Outage { role, state: Mutex::new(OutageState::default()) }
    }

    /// An error from the client or its brokers.
    pub(crate) fn error(&self, error: &KafkaError, reason: &str) {
        // Reaching a partition's end is news, not trouble.
        if let KafkaError::Global(RDKafkaErrorCode::PartitionEOF) | KafkaError::PartitionEOF(_) =
            error
        {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.errors += 1;
        let now = Instant::now();
        let Some(since) = state.since else {
            state.since = Some(now);
            state.last_summary = Some(now);
            // A topic that does not exist is the configuration's trouble, not the network's.
            let client = self.role;
            if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                tracing::warn!(client, %error, reason, "kafka: topic not found, waiting for it");
            } else {
                tracing::warn!(client, %error, reason, "kafka: brokers unreachable, waiting");
            }
            return;
        };
        if state.last_summary.map_or(true, |last| now - last >= Self::SUMMARY_EVERY) {
            state.last_summary = Some(now);
            let (errors, secs) = (state.errors, (now - since).as_secs());
            tracing::warn!(
                client = self.role,
                errors,
                secs,
                reason,
                "kafka: still waiting for the brokers"
            );
        }
    }

    /// Something worked: an outage in progress is over.
    pub(crate) fn ok(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = state.since.take() {
            let (errors, secs) = (state.errors, since.elapsed().as_secs());
            tracing::info!(client = self.role, errors, secs, "kafka: brokers reachable again");
            state.errors = 0;
        }
    }
}

impl ClientContext for Outage {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(client = self.role, ?level, fac, message, "librdkafka");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        Outage::error(self, &error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = KafkaUrl::parse("kafka://a:9092,b:9093/t1,t2?group=g&fetch.wait.max.ms=10");
        let url = url.unwrap();
        assert_eq!(url.brokers, "a:9092,b:9093");
        assert_eq!(url.path, "t1,t2");
        assert_eq!(url.query["group"], "g");
        assert_eq!(url.query["fetch.wait.max.ms"], "10");
        for bad in ["kafka://a:1", "kafka:///t", "kafka://a/t", "kafka://a:1/t?x", "tcp://a:1/t"] {
            assert!(KafkaUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
