//! One journald record as it arrives: a line of JSON, indexed but not decoded.
//!
//! The record keeps its bytes exactly as read, so anything forwarded is the original; the
//! few fields kubetag needs (MESSAGE, the unit, the host, the time) are decoded on demand.

pub(crate) mod json;
pub(crate) mod shape;

use std::borrow::Cow;

pub use shape::{Shape, ShapeConfig};

use json::{Field, Kind};

/// Why a line was not taken as a record. The names are stable: they appear in counters,
/// logs, the stats file and the dead-letter records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformed {
    Empty,
    Syntax,
    Truncated,
    NotObject,
    InvalidUtf8,
    TooLong,
    NoMessage,
    MessageType,
    /// A record kubetag itself failed on: a bug, kept out of the stream instead of
    /// stopping it.
    Internal,
}

impl Malformed {
    pub const ALL: [Malformed; 9] = [
        Malformed::Empty,
        Malformed::Syntax,
        Malformed::Truncated,
        Malformed::NotObject,
        Malformed::InvalidUtf8,
        Malformed::TooLong,
        Malformed::NoMessage,
        Malformed::MessageType,
        Malformed::Internal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Malformed::Empty => "empty",
            Malformed::Syntax => "syntax",
            Malformed::Truncated => "truncated",
            Malformed::NotObject => "not_object",
            Malformed::InvalidUtf8 => "invalid_utf8",
            Malformed::TooLong => "too_long",
            Malformed::NoMessage => "no_message",
            Malformed::MessageType => "message_type",
            Malformed::Internal => "internal",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    pub fn describe(self) -> &'static str {
        match self {
            Malformed::Empty => "blank line",
            Malformed::Syntax => "not valid JSON",
            Malformed::Truncated => "JSON cut short",
            Malformed::NotObject => "JSON that is not an object",
            Malformed::InvalidUtf8 => "invalid UTF-8",
            Malformed::TooLong => "line longer than max_line_bytes",
            Malformed::NoMessage => "record without a message field",
            Malformed::MessageType => "message field that is neither text nor bytes",
            Malformed::Internal => "a record kubetag failed on (a bug: please report it)",
        }
    }
}

/// The MESSAGE of a record, as journalctl may print it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message<'a> {
    /// Text or bytes, decoded for matching.
    Text(Cow<'a, [u8]>),
    /// `null`: journalctl leaves out values over 4096 bytes unless `--all` is given.
    Omitted,
}

/// A scanned record: the line and the index of its top-level fields.
pub(crate) struct Record<'a> {
    pub(crate) line: &'a [u8],
    pub(crate) fields: &'a [Field],
    /// Position of the closing brace.
    pub(crate) close: usize,
}

impl<'a> Record<'a> {
    /// The last field named `name` (a later duplicate wins, as in serde_json).
    pub(crate) fn field(&self, name: &str) -> Option<&'a Field> {
        self.fields.iter().rev().find(|f| key_is(self.line, f, name))
    }

    /// The first of `names` that is present.
    pub(crate) fn first_field(&self, names: &[String]) -> Option<&'a Field> {
        names.iter().find_map(|name| self.field(name))
    }

    /// The record's message, decoded into `scratch` when it needs decoding.
    pub(crate) fn message(
        &self,
        shape: &Shape,
        scratch: &'a mut Vec<u8>,
    ) -> Result<Message<'a>, Malformed> {
        let field = self.first_field(&shape.message).ok_or(Malformed::NoMessage)?;
        let raw = &self.line[field.value.clone()];
        scratch.clear();
        match field.kind {
            Kind::String if !field.escaped => Ok(Message::Text(Cow::Borrowed(raw))),
            Kind::String => {
                json::unescape(raw, scratch);
                Ok(Message::Text(Cow::Borrowed(&scratch[..])))
            }
            Kind::Null => Ok(Message::Omitted),
            Kind::Array => {
                decode_array(raw, scratch)?;
                Ok(Message::Text(Cow::Borrowed(&scratch[..])))
            }
            _ => Err(Malformed::MessageType),
        }
    }

    /// A field's value as text: strings decoded, the first value of a multi-valued field,
    /// byte arrays decoded lossily. Other kinds give `None`.
    pub(crate) fn text(&self, field: &Field) -> Option<String> {
        let raw = &self.line[field.value.clone()];
        let mut bytes = Vec::new();
        match field.kind {
            Kind::String => json::unescape(raw, &mut bytes),
            Kind::Array if byte_array(raw, &mut bytes) => {}
            Kind::Array => {
                let values: Vec<serde_json::Value> = serde_json::from_slice(raw).ok()?;
                return match values.first()? {
                    serde_json::Value::String(text) => Some(text.clone()),
                    serde_json::Value::Number(_) => {
                        decode_array(raw, &mut bytes).ok()?;
                        Some(String::from_utf8_lossy(&bytes).into_owned())
                    }
                    other => text_of_value(other),
                };
            }
            Kind::Number => bytes.extend_from_slice(raw),
            _ => return None,
        }
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The text of the first of `names` present.
    pub(crate) fn first_text(&self, names: &[String]) -> Option<String> {
        self.first_field(names).and_then(|f| self.text(f))
    }
}

fn text_of_value(value: &serde_json::Value) -> Option<String> {
    let bytes: Vec<u8> = value
        .as_array()?
        .iter()
        .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
        .collect::<Option<_>>()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether `field`'s key is `name` once decoded: a key may be written with escapes.
pub(crate) fn key_is(line: &[u8], field: &Field, name: &str) -> bool {
    let raw = &line[field.key.clone()];
    if memchr::memchr(b'\\', raw).is_none() {
        return raw == name.as_bytes();
    }
    let mut key = Vec::new();
    json::unescape(raw, &mut key);
    key == name.as_bytes()
}

/// Decodes a MESSAGE array: bytes (0-255) as journalctl prints binary values, or the
/// values of a field that occurs several times, one per line.
fn decode_array(raw: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
    if byte_array(raw, out) {
        return Ok(());
    }
    let values: Vec<serde_json::Value> =
        serde_json::from_slice(raw).map_err(|_| Malformed::MessageType)?;
    if values.iter().all(serde_json::Value::is_number) && !values.is_empty() {
        return push_bytes(&values, out);
    }
    for (i, value) in values.iter().enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        match value {
            serde_json::Value::String(text) => out.extend_from_slice(text.as_bytes()),
            serde_json::Value::Array(bytes) => push_bytes(bytes, out)?,
            serde_json::Value::Null => {}
            _ => return Err(Malformed::MessageType),
        }
    }
    if values.is_empty() {
        return Err(Malformed::MessageType);
    }
    Ok(())
}

/// Appends the bytes of `raw`, a valid JSON array, if it holds integers from 0 to 255 only
/// (and at least one); false, with `out` as it was, if it holds anything else. Decoded
/// straight from the text: as JSON values, each byte would take 32 bytes of memory, and a
/// megabyte of binary message tens of megabytes.
fn byte_array(raw: &[u8], out: &mut Vec<u8>) -> bool {
    let start = out.len();
    let mut byte: Option<u16> = None;
    for &b in &raw[1..] {
        match b {
            b'0'..=b'9' => {
                let value = byte.unwrap_or(0) * 10 + u16::from(b - b'0');
                if value > 255 {
                    break;
                }
                byte = Some(value);
            }
            b',' | b']' if byte.is_some() => {
                out.extend(byte.take().map(|v| v as u8));
                if b == b']' {
                    return true;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' => {}
            _ => break,
        }
    }
    out.truncate(start);
    false
}

fn push_bytes(values: &[serde_json::Value], out: &mut Vec<u8>) -> Result<(), Malformed> {
    for value in values {
        let byte = value.as_u64().and_then(|b| u8::try_from(b).ok());
        out.push(byte.ok_or(Malformed::MessageType)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_of(line: &str) -> Result<Option<Vec<u8>>, Malformed> {
        let mut fields = Vec::new();
        let close = json::scan_object(line.as_bytes(), &mut fields)?;
        let record = Record { line: line.as_bytes(), fields: &fields, close };
        let mut scratch = Vec::new();
        Ok(match record.message(&Shape::journald(), &mut scratch)? {
            Message::Text(text) => Some(text.into_owned()),
            Message::Omitted => None,
        })
    }

    #[test]
    fn message_forms() {
        let text = |s: &str| Ok(Some(s.as_bytes().to_vec()));
        assert_eq!(message_of(r#"{"MESSAGE":"plain"}"#), text("plain"));
        assert_eq!(message_of(r#"{"MESSAGE":"a \"q\""}"#), text("a \"q\""));
        assert_eq!(message_of(r#"{"MESSAGE":[104,105]}"#), text("hi"));
        assert_eq!(message_of(r#"{"MESSAGE":["one","two"]}"#), text("one\ntwo"));
        assert_eq!(message_of(r#"{"MESSAGE":[[104],"x"]}"#), text("h\nx"));
        assert_eq!(message_of(r#"{"MESSAGE":null}"#), Ok(None));
        assert_eq!(message_of(r#"{"MESSAGE":[104,300]}"#), Err(Malformed::MessageType));
        assert_eq!(message_of(r#"{"MESSAGE":[]}"#), Err(Malformed::MessageType));
        assert_eq!(message_of(r#"{"MESSAGE":7}"#), Err(Malformed::MessageType));
        assert_eq!(message_of(r#"{"MESSAGE":{"a":1}}"#), Err(Malformed::MessageType));
        assert_eq!(message_of(r#"{"OTHER":"x"}"#), Err(Malformed::NoMessage));
    }

    /// Arrays read straight as bytes give what JSON values would, and anything else is
    /// left to the values.
    #[test]
    fn byte_arrays_decode_as_the_json_values_would() {
        let cases = [
            "[104,105]",
            "[ 0 , 255 ]",
            "[\n7\n]",
            "[256]",
            "[1,256]",
            "[-1]",
            "[1.0]",
            "[1e2]",
            "[]",
            "[[1]]",
            "[\"a\"]",
            "[1,\"a\"]",
            "[null]",
            "[25,50,255,0]",
        ];
        for raw in cases {
            let mut out = b"kept".to_vec();
            let fast = byte_array(raw.as_bytes(), &mut out);
            let values: Vec<serde_json::Value> = serde_json::from_slice(raw.as_bytes()).unwrap();
            let bytes: Option<Vec<u8>> = values
                .iter()
                .map(|v| v.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<_>>()
                .filter(|b: &Vec<u8>| !b.is_empty());
            assert_eq!(fast, bytes.is_some(), "{raw}");
            let expected = [b"kept".to_vec(), bytes.unwrap_or_default()].concat();
            assert_eq!(out, expected, "{raw}");
        }
    }

    #[test]
    fn byte_arrays_keep_invalid_utf8_for_matching() {
        assert_eq!(message_of(r#"{"MESSAGE":[255,65]}"#), Ok(Some(vec![255, 65])));
    }

    #[test]
    fn later_duplicate_key_wins() {
        assert_eq!(message_of(r#"{"MESSAGE":"a","MESSAGE":"b"}"#), Ok(Some(b"b".to_vec())));
    }
}
