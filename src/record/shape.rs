//! Which fields of a record carry the message, the unit, the host and the time.
//!
//! journalctl names them one way; log shippers that forward journal records rename some of
//! them: Fluent Bit's systemd input can lowercase names and strip their leading
//! underscores, Vector's journald source moves MESSAGE to `message`. A shape lists, for
//! each, the names to look for in order. Records are forwarded in their own shape.

use serde::Deserialize;

/// Field names for one producer of records.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    pub message: Vec<String>,
    /// The unit or program that wrote the record, most specific first.
    pub component: Vec<String>,
    pub host: Vec<String>,
    /// The record's time: microseconds since the epoch (journald), seconds since the epoch
    /// (Fluent Bit's `date`), or RFC 3339 text (Vector's `timestamp`).
    pub time: Vec<String>,
}

/// `[tag] shape`: a preset's name or explicit field names.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ShapeConfig {
    Preset(String),
    Fields(Shape),
}

pub(crate) const PRESETS: [&str; 3] = ["journald", "fluent-bit", "vector"];

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_string()).collect()
}

/// A journald name in every spelling Fluent Bit's systemd input may give it.
fn fluent_bit_spellings(name: &str) -> Vec<String> {
    let stripped = name.trim_start_matches('_');
    let mut list = vec![name.to_string(), stripped.to_string()];
    list.push(name.to_ascii_lowercase());
    list.push(stripped.to_ascii_lowercase());
    list.dedup();
    list
}

impl Shape {
    /// The field names of `journalctl -o json`.
    pub fn journald() -> Shape {
        Shape {
            message: names(&["MESSAGE"]),
            component: names(&["_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_COMM"]),
            host: names(&["_HOSTNAME"]),
            time: names(&["__REALTIME_TIMESTAMP"]),
        }
    }

    /// Fluent Bit's systemd input, forwarded by its tcp or http output as JSON lines.
    pub fn fluent_bit() -> Shape {
        let all = |list: &[&str]| list.iter().flat_map(|n| fluent_bit_spellings(n)).collect();
        let mut time: Vec<String> = all(&["__REALTIME_TIMESTAMP"]);
        time.extend(names(&["date", "time", "@timestamp"]));
        Shape {
            message: all(&["MESSAGE"]),
            component: all(&["_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_COMM"]),
            host: all(&["_HOSTNAME"]),
            time,
        }
    }

    /// Vector's journald source: `message`, `host`, `timestamp`, journald fields beside.
    pub fn vector() -> Shape {
        Shape {
            message: names(&["message", "MESSAGE"]),
            component: names(&["_SYSTEMD_UNIT", "SYSLOG_IDENTIFIER", "_COMM"]),
            host: names(&["host", "_HOSTNAME"]),
            time: names(&["__REALTIME_TIMESTAMP", "timestamp"]),
        }
    }

    pub fn preset(name: &str) -> Option<Shape> {
        match name {
            "journald" => Some(Shape::journald()),
            "fluent-bit" => Some(Shape::fluent_bit()),
            "vector" => Some(Shape::vector()),
            _ => None,
        }
    }
}

impl ShapeConfig {
    pub fn resolve(&self) -> Result<Shape, String> {
        match self {
            ShapeConfig::Fields(shape) => Ok(shape.clone()),
            ShapeConfig::Preset(name) => Shape::preset(name)
                .ok_or_else(|| format!("unknown shape {name:?}, presets: {}", PRESETS.join(", "))),
        }
    }
}

/// A time field's value in microseconds since the epoch: journald's microseconds, epoch
/// seconds (with a fraction), or RFC 3339 text.
pub(crate) fn micros(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.bytes().all(|b| b.is_ascii_digit()) && !text.is_empty() {
        let n: u64 = text.parse().ok()?;
        // Microseconds since 1970 pass 10^15 in 2001; seconds never get there.
        return Some(if n >= 1_000_000_000_000_000 / 10 { n } else { n.checked_mul(1_000_000)? });
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then_some((seconds * 1e6) as u64);
    }
    let (local, offset_secs) = split_offset(text)?;
    let time = humantime::parse_rfc3339_weak(local).ok()?;
    let since = time.duration_since(std::time::UNIX_EPOCH).ok()?;
    let micros = i128::try_from(since.as_micros()).ok()? - i128::from(offset_secs) * 1_000_000;
    u64::try_from(micros).ok()
}

/// RFC 3339 text without its zone, and the zone's offset east of UTC in seconds.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Some((local, 0));
    }
    let at = text.len().checked_sub(6)?;
    // An offset is ASCII: text whose last six bytes split a character has none.
    let (Some(local), Some(zone)) = (text.get(..at), text.get(at..)) else {
        return Some((text, 0));
    };
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return Some((text, 0)),
    };
    let (hours, minutes) = zone[1..].split_once(':')?;
    let (hours, minutes): (i64, i64) = (hours.parse().ok()?, minutes.parse().ok()?);
    Some((local, sign * (hours * 3600 + minutes * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_every_form() {
        assert_eq!(micros("1796374801000000"), Some(1_796_374_801_000_000));
        assert_eq!(micros("1796374801"), Some(1_796_374_801_000_000));
        assert_eq!(micros("1796374801.25"), Some(1_796_374_801_250_000));
        assert_eq!(micros("2026-12-04T09:00:01.5Z"), Some(1_796_374_801_500_000));
        assert_eq!(micros("2026-12-04T11:00:01.5+02:00"), Some(1_796_374_801_500_000));
        assert_eq!(micros("2026-12-04T04:00:01.5-05:00"), Some(1_796_374_801_500_000));
        assert_eq!(micros("2026-12-04t09:00:01.5z"), None, "humantime wants an upper-case T");
        assert_eq!(micros("yesterday"), None);
        // Six bytes from the end is inside 'ҥ': no offset, and no panic.
        assert_eq!(micros("77ҥ[,,97"), None);
        assert_eq!(micros("2026-12-04T09:00:01ҥ:00"), None);
    }

    #[test]
    fn fluent_bit_spells_names_four_ways() {
        let shape = Shape::fluent_bit();
        for name in ["_SYSTEMD_UNIT", "SYSTEMD_UNIT", "_systemd_unit", "systemd_unit"] {
            assert!(shape.component.iter().any(|n| n == name), "{name}");
        }
    }
}
