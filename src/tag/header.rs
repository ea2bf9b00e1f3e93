//! The headers node agents put in front of their messages: klog (`E0118 10:19:44.767958
//! 197889 kubelet.go:1877] ...`, unstructured or with `key="value"` pairs), logrus (`time=...
//! level=error msg=...`, used by containerd, CRI-O and dockerd) and kubelet's JSON format.

use serde::Serialize;

/// Most fields a header keeps; klog lines can carry long pod specs.
const MAX_FIELDS: usize = 32;

/// A parsed header and the fields after it.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct LogHeader {
    pub(crate) format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) source: Option<String>,
    /// The time as the agent printed it (klog prints local time without a year).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) thread: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", serialize_with = "as_map")]
    pub(crate) fields: Vec<(String, String)>,
}

fn as_map<S: serde::Serializer>(fields: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(fields.iter().map(|(k, v)| (k, v)))
}

impl LogHeader {
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// The header of `message`, if it has one kubetag knows.
pub(crate) fn parse(message: &str) -> Option<LogHeader> {
    let message = message.trim_start();
    if message.starts_with('{') {
        return json(message);
    }
    if message.starts_with("time=") {
        return logrus(message);
    }
    klog(message)
}

fn klog(message: &str) -> Option<LogHeader> {
    let level = match message.as_bytes().first()? {
        b'I' => "info",
        b'W' => "warning",
        b'E' => "error",
        b'F' => "fatal",
        _ => return None,
    };
    let date = message.get(1..5).filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
    let rest = message[5..].strip_prefix(' ')?;
    let (clock, rest) = rest.split_once(' ')?;
    if clock.len() < 8 || !clock.bytes().all(|b| b.is_ascii_digit() || b == b':' || b == b'.') {
        return None;
    }
    let rest = rest.trim_start();
    let (thread, rest) = rest.split_once(' ')?;
    let (source, text) =
        rest.split_once("] ").or_else(|| rest.strip_suffix(']').map(|s| (s, "")))?;
    if !source.contains(':') || source.contains(' ') {
        return None;
    }

    let mut header = LogHeader {
        format: "klog",
        level: Some(level.into()),
        source: Some(source.into()),
        time: Some(format!("{date} {clock}")),
        thread: thread.parse().ok(),
        ..LogHeader::default()
    };
    match quoted(text) {
        Some((msg, pairs)) => {
            header.message = Some(msg);
            header.fields = logfmt(pairs);
        }
        None => header.message = Some(text.to_string()),
    }
    Some(header)
}

fn logrus(message: &str) -> Option<LogHeader> {
    let mut fields = logfmt(message);
    let take = |fields: &mut Vec<(String, String)>, key: &str| {
        let at = fields.iter().position(|(k, _)| k == key)?;
        Some(fields.remove(at).1)
    };
    let time = take(&mut fields, "time");
    let level = take(&mut fields, "level");
    let msg = take(&mut fields, "msg");
    level.as_ref()?;
    let source = take(&mut fields, "file").or_else(|| take(&mut fields, "caller"));
    Some(LogHeader { format: "logrus", level, source, time, thread: None, message: msg, fields })
}

fn json(message: &str) -> Option<LogHeader> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(message).ok()?;
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let time = object.get("ts").and_then(|ts| ts.as_f64()).and_then(json_time);
    let level = if object.contains_key("err") { "error" } else { "info" };
    let skip = ["ts", "caller", "msg", "v"];
    let fields = object
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .take(MAX_FIELDS)
        .map(|(k, v)| (k.clone(), text(v)))
        .collect();
    Some(LogHeader {
        format: "json",
        level: Some(level.into()),
        source: object.get("caller").map(text),
        time,
        thread: None,
        message: object.get("msg").map(text),
        fields,
    })
}

/// 10000-01-01T00:00:00Z in milliseconds since the epoch.
const MAX_RFC3339_MILLIS: f64 = 253_402_300_800_000.0;

/// kubelet's JSON `ts` (milliseconds since the epoch) in RFC 3339. A time past year 9999
/// cannot be written in RFC 3339 (and would overflow a Duration further on): left out.
fn json_time(ms: f64) -> Option<String> {
    if !(0.0..MAX_RFC3339_MILLIS).contains(&ms) {
        return None;
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(ms / 1e3);
    Some(humantime::format_rfc3339_millis(time).to_string())
}

/// A Go-quoted string at the start of `text`: its value and what follows it.
fn quoted(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &body[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// `key=value` pairs, values bare or Go-quoted. Stops at anything else (klog's multi-line
/// `key=<` values, free text).
fn logfmt(mut text: &str) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    loop {
        text = text.trim_start();
        let Some((key, rest)) = text.split_once('=') else {
            break;
        };
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
        if !key_ok || fields.len() == MAX_FIELDS {
            break;
        }
        let (value, rest) = match quoted(rest) {
            Some((value, rest)) => (value, rest),
            None if rest.starts_with('"') || rest.starts_with('<') => break,
            None => {
                let end = rest.find(' ').unwrap_or(rest.len());
                (rest[..end].to_string(), &rest[end..])
            }
        };
        // A repeated key keeps its first value: the fields are a JSON object, and a
        // reader of duplicate keys would pick one of them as it likes.
        if !fields.iter().any(|(k, _)| k == key) {
            fields.push((key.to_string(), value));
        }
        text = rest;
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn json_times_past_year_9999_are_left_out() {
        // Found by fuzzing: humantime cannot print such a time, and to_string panicked.
        let header = parse(r#"{"ts":175312129415774375,"msg":"x"}"#).unwrap();
        assert_eq!(header.time, None);
        let header = parse(r#"{"ts":1e300,"msg":"x"}"#).unwrap();
        assert_eq!(header.time, None);
        let header = parse(r#"{"ts":1700000000123.4,"msg":"x"}"#).unwrap();
        assert_eq!(header.time.as_deref(), Some("2023-11-14T22:13:20.123Z"));
    }

    #[test]
    fn klog_structured() {
        let line = r#"E0207 02:49:40.739041   24578 kuberuntime_sandbox.go:72] "Failed to create sandbox for pod" err="rpc error: code = DeadlineExceeded desc = \"x\"" pod="default/podX""#;
        let header = parse(line).unwrap();
        assert_eq!(header.format, "klog");
        assert_eq!(header.level.as_deref(), Some("error"));
        assert_eq!(header.source.as_deref(), Some("kuberuntime_sandbox.go:72"));
        assert_eq!(header.time.as_deref(), Some("0207 02:49:40.739041"));
        assert_eq!(header.thread, Some(24578));
        assert_eq!(header.message.as_deref(), Some("Failed to create sandbox for pod"));
        let want =
            [("err", "rpc error: code = DeadlineExceeded desc = \"x\""), ("pod", "default/podX")];
        assert_eq!(header.fields, pairs(&want));
    }

    #[test]
    fn klog_unstructured() {
        let line = "I0318 02:07:10.018880   29652 server.go:182] Version: v1.9.4";
        let header = parse(line).unwrap();
        assert_eq!(header.message.as_deref(), Some("Version: v1.9.4"));
        assert!(header.fields.is_empty());
    }

    #[test]
    fn klog_multiline_value_stops_the_pairs() {
        let line = r#"I0205 10:58:14.917220   12704 swap_util.go:115] "Swap is on" /proc/swaps contents=<"#;
        let header = parse(line).unwrap();
        assert_eq!(header.message.as_deref(), Some("Swap is on"));
        assert!(header.fields.is_empty());
    }

    #[test]
    fn logrus_line() {
        let line = r#"time="2021-02-06T17:10:24.990867899+01:00" level=debug msg="failed to delete task" error="rpc error: code = NotFound" id=db2e"#;
        let header = parse(line).unwrap();
        assert_eq!(header.format, "logrus");
        assert_eq!(header.level.as_deref(), Some("debug"));
        assert_eq!(header.time.as_deref(), Some("2021-02-06T17:10:24.990867899+01:00"));
        assert_eq!(header.message.as_deref(), Some("failed to delete task"));
        assert_eq!(
            header.fields,
            pairs(&[("error", "rpc error: code = NotFound"), ("id", "db2e")])
        );
    }

    #[test]
    fn kubelet_json_line() {
        let line = r#"{"ts":1700168537196.4094,"caller":"dns/dns.go:153","msg":"Nameserver limits exceeded","err":"too many"}"#;
        let header = parse(line).unwrap();
        assert_eq!(header.format, "json");
        assert_eq!(header.level.as_deref(), Some("error"));
        assert_eq!(header.source.as_deref(), Some("dns/dns.go:153"));
        assert_eq!(header.time.as_deref(), Some("2023-11-16T21:02:17.196Z"));
        assert_eq!(header.fields, pairs(&[("err", "too many")]));

        let repeated = r#"E1204 09:00:03.000000    2101 remote_image.go:180] "PullImage from image service failed" image="nginx:1" err="x" image="evil:2""#;
        let header = parse(repeated).unwrap();
        assert_eq!(header.fields, pairs(&[("image", "nginx:1"), ("err", "x")]), "first kept");
        let logrus = r#"time="2024-01-01T00:00:00Z" level=error msg="failed" id=a id=b"#;
        assert_eq!(parse(logrus).unwrap().fields, pairs(&[("id", "a")]));
    }

    #[test]
    fn plain_text_has_no_header() {
        assert_eq!(parse("Back-off restarting failed container"), None);
        assert_eq!(parse("Error: unknown flag: --config"), None);
    }
}
