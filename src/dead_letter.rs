//! The dead-letter path: every rejected line, with why and where, as one JSON line.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use bytes::Bytes;
use serde::Serialize;

use crate::record::Malformed;
use crate::source::lines::Origin;

/// A line the pipeline refused.
#[derive(Debug)]
pub(crate) struct Reject {
    /// The line's place within its batch, from 0.
    pub(crate) offset: u64,
    pub(crate) reason: Malformed,
    /// The line, or its start when it was too long to keep.
    pub(crate) raw: Bytes,
    /// The line's full length, without its line ending (the newline, and a CR before it).
    pub(crate) len: u64,
    /// The Kafka message it was, if it was one.
    pub(crate) origin: Option<Origin>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    source: &'a str,
    line: u64,
    reason: &'static str,
    error: &'static str,
    bytes: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<i64>,
    raw: Raw<'a>,
}

/// The line as text when it is UTF-8, else as its bytes, the way journalctl prints them.
#[derive(Serialize)]
#[serde(untagged)]
enum Raw<'a> {
    Text(&'a str),
    Bytes(&'a [u8]),
}

/// Writes rejects to a file, one envelope a line.
pub(crate) struct DeadLetter {
    writer: BufWriter<std::fs::File>,
}

impl DeadLetter {
    pub(crate) fn open(path: &PathBuf) -> io::Result<DeadLetter> {
        let file = crate::sink::append(path).map_err(|e| {
            io::Error::new(e.kind(), format!("dead-letter file {}: {e}", path.display()))
        })?;
        Ok(DeadLetter { writer: BufWriter::new(file) })
    }

    pub(crate) fn write(&mut self, source: &str, line: u64, reject: &Reject) -> io::Result<()> {
        let raw = match std::str::from_utf8(&reject.raw) {
            Ok(text) => Raw::Text(text),
            Err(_) => Raw::Bytes(&reject.raw),
        };
        let envelope = Envelope {
            source,
            line,
            reason: reject.reason.name(),
            error: reject.reason.describe(),
            bytes: reject.len,
            truncated: (reject.raw.len() as u64) < reject.len,
            topic: reject.origin.as_ref().map(|o| &*o.topic),
            partition: reject.origin.as_ref().map(|o| o.partition),
            offset: reject.origin.as_ref().map(|o| o.offset),
            raw,
        };
        serde_json::to_writer(&mut self.writer, &envelope)?;
        self.writer.write_all(b"\n")
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}
