//! Which fields of a record carry the message, the unit, the host and the time.
//!
//! journalctl names them one way; log shippers that forward journal records rename some of
//! them. A shape lists, for each, the names to look for in order.

use serde::Deserialize;

/// Field names for one producer of records.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub message: Vec<String>,
    /// The unit or program that wrote the record, most specific first.
    pub component: Vec<String>,
    pub host: Vec<String>,
    /// Microseconds since the epoch, as journald's `__REALTIME_TIMESTAMP`.
    pub realtime_usec: Vec<String>,
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_string()).collect()
}

impl Shape {
    /// The field names of `journalctl -o json`.
    pub fn journald() -> Shape {
        Shape {
            message: names(&["MESSAGE"]),
            component: names(&["_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_COMM"]),
            host: names(&["_HOSTNAME"]),
            realtime_usec: names(&["__REALTIME_TIMESTAMP"]),
        }
    }
}
