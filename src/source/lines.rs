//! Splits a byte stream into batches of whole lines without copying them, with a bound on
//! line length that holds without buffering the long line.

use std::io::{self, Read};

use bytes::{Bytes, BytesMut};

/// How much of an over-long line is kept for the dead-letter record.
pub(crate) const KEPT_PREFIX_BYTES: usize = 4096;

/// A unit of work cut from a stream.
#[derive(Debug)]
pub(crate) enum Frame {
    /// Whole lines, each ending in a newline (the last one may not, at end of input).
    Lines(Bytes),
    /// A line longer than the limit, skipped: its start and its full length.
    Oversize { prefix: Bytes, len: u64 },
}

/// The lines of a frame's bytes: for each, its range without the newline (or a CR before
/// it) and the bytes it took in the stream, newline included. The last line may lack one.
pub(crate) fn lines(bytes: &[u8]) -> impl Iterator<Item = (std::ops::Range<usize>, u64)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= bytes.len() {
            return None;
        }
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |at| start + at);
        let taken = (end - start) as u64 + u64::from(end < bytes.len());
        let line = match &bytes[start..end] {
            [body @ .., b'\r'] => start..start + body.len(),
            _ => start..end,
        };
        start = end + 1;
        Some((line, taken))
    })
}

/// Cuts frames from the reads of one stream.
pub(crate) struct Framer {
    buf: BytesMut,
    max_line_bytes: usize,
    read_bytes: usize,
    skipping: Option<(Bytes, u64)>,
}

impl Framer {
    pub(crate) fn new(max_line_bytes: usize, read_bytes: usize) -> Framer {
        Framer { buf: BytesMut::new(), max_line_bytes, read_bytes, skipping: None }
    }

    /// Reads once from `reader`, appending the frames that are complete. Returns the bytes
    /// read: 0 at end of input.
    pub(crate) fn read(
        &mut self,
        reader: &mut dyn Read,
        out: &mut Vec<Frame>,
    ) -> io::Result<usize> {
        let start = self.buf.len();
        self.buf.resize(start + self.read_bytes, 0);
        let read = loop {
            match reader.read(&mut self.buf[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        let n = read.inspect_err(|_| self.buf.truncate(start))?;
        self.buf.truncate(start + n);
        self.cut(start, out);
        Ok(n)
    }

    /// Frames from bytes the caller already has.
    #[cfg(test)]
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        self.cut(start, out);
    }

    /// After a cut the buffer holds no newline, so only bytes from `fresh` on can hold one.
    fn cut(&mut self, mut fresh: usize, out: &mut Vec<Frame>) {
        if let Some((prefix, len)) = self.skipping.take() {
            let Some(at) = memchr::memchr(b'\n', &self.buf) else {
                self.skipping = Some((prefix, len + self.buf.len() as u64));
                self.buf.clear();
                return;
            };
            let _ = self.buf.split_to(at + 1);
            out.push(Frame::Oversize { prefix, len: len + at as u64 });
            fresh = 0;
        }
        if let Some(at) = memchr::memrchr(b'\n', &self.buf[fresh..]) {
            out.push(Frame::Lines(self.buf.split_to(fresh + at + 1).freeze()));
        }
        if self.buf.len() > self.max_line_bytes {
            let keep = self.buf.len().min(KEPT_PREFIX_BYTES);
            let prefix = Bytes::copy_from_slice(&self.buf[..keep]);
            self.skipping = Some((prefix, self.buf.len() as u64));
            self.buf.clear();
        }
    }

    /// At end of input: the last line if it had no newline, or the long line being skipped.
    pub(crate) fn finish(&mut self, out: &mut Vec<Frame>) {
        if let Some((prefix, len)) = self.skipping.take() {
            out.push(Frame::Oversize { prefix, len });
        }
        if !self.buf.is_empty() {
            out.push(Frame::Lines(self.buf.split().freeze()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(chunks: &[&[u8]], max: usize) -> Vec<String> {
        let mut framer = Framer::new(max, 16);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.push(chunk, &mut out);
        }
        framer.finish(&mut out);
        out.iter()
            .map(|f| match f {
                Frame::Lines(b) => format!("L:{}", String::from_utf8_lossy(b)),
                Frame::Oversize { prefix, len } => {
                    format!("O:{}:{len}", String::from_utf8_lossy(&prefix[..3]))
                }
            })
            .collect()
    }

    #[test]
    fn lines_drop_newlines_and_a_cr_before_them() {
        let got: Vec<_> = lines(b"a\r\nbc\n\nd").collect();
        assert_eq!(got, [(0..1, 3), (3..5, 3), (6..6, 1), (7..8, 1)]);
    }

    #[test]
    fn whole_lines_only() {
        assert_eq!(frames(&[b"ab\ncd", b"e\nf"], 100), ["L:ab\n", "L:cde\n", "L:f"]);
    }

    #[test]
    fn long_line_is_skipped_and_the_stream_goes_on() {
        let long = [b'x'; 30];
        let got = frames(&[b"ok\n", &long, &long, b"\nnext\n"], 20);
        assert_eq!(got, ["L:ok\n", "O:xxx:60", "L:next\n"]);
    }

    #[test]
    fn long_last_line_without_newline() {
        assert_eq!(frames(&[&[b'y'; 50]], 20), ["O:yyy:50"]);
    }

    #[test]
    fn reads_from_a_reader() {
        let mut framer = Framer::new(1 << 20, 4);
        let mut out = Vec::new();
        let mut input: &[u8] = b"one\ntwo\nthree";
        while framer.read(&mut input, &mut out).unwrap() > 0 {}
        framer.finish(&mut out);
        let text: Vec<_> = out
            .iter()
            .map(|f| match f {
                Frame::Lines(b) => String::from_utf8_lossy(b).into_owned(),
                Frame::Oversize { .. } => "oversize".into(),
            })
            .collect();
        assert_eq!(text.concat(), "one\ntwo\nthree");
    }
}
