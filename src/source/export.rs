//! The journal export format (`journalctl -o export`), read as a stream, and each entry
//! written as the JSON line `journalctl -o json` would print, so that records from the
//! journal look the same downstream as records piped in.
//!
//! Text fields are `NAME=value` lines; a binary field is its name on a line, a 64-bit
//! little-endian length, the bytes and a newline; a blank line ends an entry.

use std::io::{self, BufRead, BufReader, Read};

/// One entry's fields, in the order the journal gave them.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    pub(crate) fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes of the fields, to bound an entry like a line.
    pub(crate) bytes: usize,
    /// A field too large to keep was skipped.
    pub(crate) oversize: bool,
}

impl Entry {
    fn clear(&mut self) {
        self.fields.clear();
        self.bytes = 0;
        self.oversize = false;
    }

    pub(crate) fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }
}

/// Reads entries from an export stream, holding at most `max_entry_bytes` of one entry.
pub(crate) struct ExportReader<R> {
    input: R,
    max_entry_bytes: usize,
    line: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportError {
    #[error("reading the export stream: {0}")]
    Io(#[from] io::Error),
    #[error("export stream: {0}")]
    Format(&'static str),
}

impl<R: Read> ExportReader<BufReader<R>> {
    /// Whether nothing read is left in the buffer, so the next entry may have to wait.
    pub(crate) fn drained(&self) -> bool {
        self.input.buffer().is_empty()
    }
}

impl<R: BufRead> ExportReader<R> {
    pub(crate) fn new(input: R, max_entry_bytes: usize) -> Self {
        ExportReader { input, max_entry_bytes, line: Vec::new() }
    }

    /// Reads the next entry into `entry`. Returns false at the end of the stream (an entry
    /// cut short by the end is still returned).
    pub(crate) fn next(&mut self, entry: &mut Entry) -> Result<bool, ExportError> {
        entry.clear();
        loop {
            self.line.clear();
            let n = self.read_line()?;
            if n == 0 {
                return Ok(!entry.fields.is_empty());
            }
            if self.line == b"\n" {
                if entry.fields.is_empty() {
                    continue;
                }
                return Ok(true);
            }
            let line = self.line.strip_suffix(b"\n").unwrap_or(&self.line).to_vec();
            match memchr::memchr(b'=', &line) {
                Some(at) => {
                    let (name, value) = (line[..at].to_vec(), line[at + 1..].to_vec());
                    self.keep(entry, name, value);
                }
                None => self.binary(entry, line)?,
            }
        }
    }

    /// A line, bounded: a longer one is read through and marked oversize.
    fn read_line(&mut self) -> io::Result<usize> {
        let mut total = 0;
        loop {
            let buf = self.input.fill_buf()?;
            if buf.is_empty() {
                return Ok(total);
            }
            let (used, done) = match memchr::memchr(b'\n', buf) {
                Some(at) => (at + 1, true),
                None => (buf.len(), false),
            };
            let room = (self.max_entry_bytes + 1).saturating_sub(self.line.len());
            self.line.extend_from_slice(&buf[..used.min(room)]);
            self.input.consume(used);
            total += used;
            if done {
                return Ok(total);
            }
        }
    }

    fn binary(&mut self, entry: &mut Entry, name: Vec<u8>) -> Result<(), ExportError> {
        let mut len = [0u8; 8];
        self.input
            .read_exact(&mut len)
            .map_err(|_| ExportError::Format("binary field cut short"))?;
        let len = u64::from_le_bytes(len);
        let mut value = Vec::new();
        let keep = len.min(self.max_entry_bytes as u64 + 1);
        (&mut self.input).take(keep).read_to_end(&mut value)?;
        let skipped = io::copy(&mut (&mut self.input).take(len - keep), &mut io::sink())?;
        if value.len() as u64 + skipped != len {
            return Err(ExportError::Format("binary field cut short"));
        }
        let mut newline = [0u8; 1];
        self.input
            .read_exact(&mut newline)
            .map_err(|_| ExportError::Format("binary field cut short"))?;
        if newline != *b"\n" {
            return Err(ExportError::Format("binary field not followed by a newline"));
        }
        self.keep(entry, name, value);
        Ok(())
    }

    fn keep(&self, entry: &mut Entry, name: Vec<u8>, value: Vec<u8>) {
        entry.bytes += name.len() + value.len() + 8;
        if entry.bytes > self.max_entry_bytes || value.len() > self.max_entry_bytes {
            entry.oversize = true;
            return;
        }
        entry.fields.push((name, value));
    }
}

/// Writes `entry` as journalctl's JSON: a value is a string when it is printable UTF-8, else
/// an array of its bytes; a field that occurs several times becomes an array of its values,
/// where it first occurs.
pub(crate) fn write_json(entry: &Entry, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for (i, (name, value)) in entry.fields.iter().enumerate() {
        let earlier = entry.fields[..i].iter().any(|(n, _)| n == name);
        if earlier {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        write_string(&String::from_utf8_lossy(name), out);
        out.push(b':');
        let repeats = entry.fields[i + 1..].iter().any(|(n, _)| n == name);
        if repeats {
            out.push(b'[');
            let values = entry.fields[i..].iter().filter(|(n, _)| n == name);
            for (j, (_, value)) in values.enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                write_value(value, out);
            }
            out.push(b']');
        } else {
            write_value(value, out);
        }
    }
    out.extend_from_slice(b"}\n");
}

fn write_value(value: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(value) {
        Ok(text) if printable(text) => write_string(text, out),
        _ => {
            serde_json::to_writer(&mut *out, value).expect("writing to a Vec cannot fail");
        }
    }
}

fn write_string(text: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
}

/// journald's rule: no control characters but tab and newline, no C1 controls.
fn printable(text: &str) -> bool {
    text.chars()
        .all(|c| !((c < ' ' && c != '\t' && c != '\n') || ('\u{7f}'..='\u{9f}').contains(&c)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(stream: &[u8]) -> Vec<String> {
        let mut reader = ExportReader::new(stream, 1 << 20);
        let mut entry = Entry::default();
        let mut out = Vec::new();
        while reader.next(&mut entry).unwrap() {
            let mut line = Vec::new();
            write_json(&entry, &mut line);
            out.push(String::from_utf8(line).unwrap());
        }
        out
    }

    #[test]
    fn text_binary_and_repeated_fields() {
        let mut stream = b"__CURSOR=s=1\nMESSAGE=hello\n\n".to_vec();
        stream.extend_from_slice(b"MESSAGE\n");
        stream.extend_from_slice(&5u64.to_le_bytes());
        stream.extend_from_slice(b"a\nb\x01c\n");
        stream.extend_from_slice(b"TAG=x\nTAG=y\n\n");
        assert_eq!(
            entries(&stream),
            [
                "{\"__CURSOR\":\"s=1\",\"MESSAGE\":\"hello\"}\n",
                "{\"MESSAGE\":[97,10,98,1,99],\"TAG\":[\"x\",\"y\"]}\n",
            ]
        );
    }

    #[test]
    fn newline_and_tab_stay_text() {
        let mut stream = b"MESSAGE\n".to_vec();
        stream.extend_from_slice(&5u64.to_le_bytes());
        stream.extend_from_slice(b"a\nb\tc\n\n");
        assert_eq!(entries(&stream), ["{\"MESSAGE\":\"a\\nb\\tc\"}\n"]);
    }

    #[test]
    fn an_entry_cut_short_at_the_end_is_kept() {
        assert_eq!(entries(b"MESSAGE=last"), ["{\"MESSAGE\":\"last\"}\n"]);
    }

    #[test]
    fn a_binary_field_cut_short_is_an_error() {
        let mut stream = b"MESSAGE\n".to_vec();
        stream.extend_from_slice(&50u64.to_le_bytes());
        stream.extend_from_slice(b"short");
        let mut reader = ExportReader::new(&stream[..], 1 << 20);
        assert!(reader.next(&mut Entry::default()).is_err());
    }

    #[test]
    fn oversize_fields_are_skipped_in_bounded_memory() {
        let mut stream = b"A=1\nMESSAGE\n".to_vec();
        stream.extend_from_slice(&(1u64 << 20).to_le_bytes());
        stream.extend(std::iter::repeat_n(b'x', 1 << 20));
        stream.extend_from_slice(b"\nB=2\n\nC=3\n\n");
        let mut reader = ExportReader::new(&stream[..], 1024);
        let mut entry = Entry::default();
        assert!(reader.next(&mut entry).unwrap());
        assert!(entry.oversize);
        assert!(reader.next(&mut entry).unwrap());
        assert_eq!(entry.get(b"C"), Some(&b"3"[..]));
    }
}

/// An export stream read as the JSON lines `journalctl -o json` would print, so readers of
/// JSON lines take either format.
pub(crate) struct JsonLines<R> {
    reader: ExportReader<R>,
    entry: Entry,
    line: Vec<u8>,
    at: usize,
}

impl<R: BufRead> JsonLines<R> {
    pub(crate) fn new(input: R, max_entry_bytes: usize) -> Self {
        let reader = ExportReader::new(input, max_entry_bytes);
        JsonLines { reader, entry: Entry::default(), line: Vec::new(), at: 0 }
    }
}

impl<R: BufRead> Read for JsonLines<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.line.len() {
            self.line.clear();
            self.at = 0;
            let more = self.reader.next(&mut self.entry).map_err(|e| match e {
                ExportError::Io(e) => e,
                ExportError::Format(what) => io::Error::new(io::ErrorKind::InvalidData, what),
            })?;
            if !more {
                return Ok(0);
            }
            if self.entry.oversize {
                // Too large to keep: an empty object stands for it and is counted malformed.
                self.line.extend_from_slice(b"{}\n");
            } else {
                write_json(&self.entry, &mut self.line);
            }
        }
        let n = out.len().min(self.line.len() - self.at);
        out[..n].copy_from_slice(&self.line[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Whether a stream that starts with `head` is in the export format rather than JSON lines.
pub(crate) fn is_export(head: &[u8]) -> bool {
    let first = head.iter().position(|b| !b.is_ascii_whitespace()).map(|at| head[at]);
    let name_end = head.iter().position(|&b| b == b'=' || b == b'\n');
    first.is_some_and(|b| b == b'_' || b.is_ascii_uppercase())
        && name_end
            .is_some_and(|at| head[..at].iter().all(|&b| b == b'_' || b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod json_lines_tests {
    use super::*;

    #[test]
    fn export_reads_as_json_lines() {
        let mut text = String::new();
        JsonLines::new(&b"MESSAGE=a\n\nMESSAGE=b\n\n"[..], 1 << 20)
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "{\"MESSAGE\":\"a\"}\n{\"MESSAGE\":\"b\"}\n");
    }

    #[test]
    fn formats_are_told_apart() {
        assert!(is_export(b"__CURSOR=s=1\nMESSAGE=x\n"));
        assert!(is_export(b"MESSAGE\n\x05\0\0\0\0\0\0\0hello\n"));
        assert!(!is_export(b"{\"MESSAGE\":\"x\"}\n"));
        assert!(!is_export(b"not json\n"));
        assert!(!is_export(b""));
    }
}
