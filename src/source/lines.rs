//! Splits a byte stream into batches of whole lines without copying them, with a bound on
//! line length that holds without buffering the long line.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;

use crate::tag::route::Headers;

/// How much of an over-long line is kept for the dead-letter record.
pub(crate) const KEPT_PREFIX_BYTES: usize = 4096;

/// A unit of work cut from a stream.
#[derive(Debug)]
pub(crate) enum Frame {
    /// Whole lines, each ending in a newline (the last one may not, at end of input).
    Lines(Bytes),
    /// A line longer than the limit, skipped. `prefix` is its start; `len` its length
    /// without its line ending (the newline, and a CR before it or at the end of input),
    /// as [`lines`] measures a line and the dead-letter record reports it; `taken` the bytes
    /// it took in the stream, its newline included if it had one.
    Oversize { prefix: Bytes, len: u64, taken: u64 },
    /// Records that arrive whole, one a message (Kafka), side by side in one buffer.
    Records { bytes: Bytes, records: Vec<Whole> },
}

/// One record of a [`Frame::Records`].
#[derive(Debug)]
pub(crate) struct Whole {
    /// Its bytes in the frame's buffer: all of them, or only the start of a record longer
    /// than the line limit.
    pub(crate) range: std::ops::Range<usize>,
    /// Its full size as it arrived.
    pub(crate) len: u64,
    pub(crate) headers: Option<Arc<Headers>>,
    pub(crate) origin: Origin,
}

/// Where a whole record came from, for its dead-letter envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
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

/// The shortest the line holding `tail` can turn out to be. A CR at its end is not counted:
/// it is dropped with the newline if one comes next, and at the end of input too, the way
/// [`lines`] drops it, so where a read happens to end cannot change the verdict.
fn tail_body(tail: &[u8]) -> usize {
    tail.len() - usize::from(tail.last() == Some(&b'\r'))
}

/// A read buffer lent to the frames cut from it; when the last frame lets go of it, it
/// goes back to its framer, so reads land in memory that is already initialised instead of
/// memory that must be zeroed first.
struct Lent {
    data: Vec<u8>,
    len: usize,
    home: Spare,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.home.put(std::mem::take(&mut self.data));
    }
}

/// Buffers kept for reuse; more in flight are simply allocated.
const SPARE_BUFFERS: usize = 8;

/// Buffers back from their frames, the last one back on top: it is the likeliest to be
/// still in a cache. Only buffers of about the read size are kept: one grown to hold a
/// long line would otherwise stay, up to [`SPARE_BUFFERS`] of them, for the whole run.
#[derive(Clone)]
struct Spare {
    buffers: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    max_bytes: usize,
}

impl Spare {
    fn new(read_bytes: usize) -> Spare {
        Spare { buffers: Arc::default(), max_bytes: 2 * read_bytes }
    }

    fn take(&self) -> Option<Vec<u8>> {
        self.buffers.lock().ok()?.pop()
    }

    fn put(&self, buf: Vec<u8>) {
        if buf.capacity() > self.max_bytes {
            return;
        }
        if let Ok(mut spare) = self.buffers.lock() {
            if spare.len() < SPARE_BUFFERS {
                spare.push(buf);
            }
        }
    }
}

/// Cuts frames from the reads of one stream.
pub(crate) struct Framer {
    /// The start of a line whose newline has not come yet.
    tail: Vec<u8>,
    max_line_bytes: usize,
    read_bytes: usize,
    skipping: Option<Skipped>,
    spare: Spare,
}

/// A line over the limit, read on until its newline without being kept.
struct Skipped {
    /// Its start, for the dead-letter record.
    prefix: Bytes,
    /// Its bytes read so far.
    len: u64,
    /// Whether the last of them is a CR: with a newline next, or at the end of input, it
    /// belongs to the line ending.
    cr: bool,
}

impl Skipped {
    fn new(tail: &[u8]) -> Skipped {
        let prefix = Bytes::copy_from_slice(&tail[..tail.len().min(KEPT_PREFIX_BYTES)]);
        let mut skipped = Skipped { prefix, len: 0, cr: false };
        skipped.extend(tail);
        skipped
    }

    /// More of the line, without a newline.
    fn extend(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        if let Some(&last) = bytes.last() {
            self.cr = last == b'\r';
        }
    }

    /// The line, now that its newline came (`newline`) or its input ended.
    fn frame(self, newline: bool) -> Frame {
        let len = self.len - u64::from(self.cr);
        let mut prefix = self.prefix;
        prefix.truncate(len as usize);
        Frame::Oversize { prefix, len, taken: self.len + u64::from(newline) }
    }
}

impl Framer {
    pub(crate) fn new(max_line_bytes: usize, read_bytes: usize) -> Framer {
        Framer {
            tail: Vec::new(),
            max_line_bytes,
            read_bytes,
            skipping: None,
            spare: Spare::new(read_bytes),
        }
    }

    /// A buffer holding the tail, with `read_bytes` of initialised room after it.
    fn buffer(&mut self) -> Vec<u8> {
        let mut buf = self.spare.take().unwrap_or_default();
        let want = self.tail.len() + self.read_bytes;
        if buf.len() < want {
            buf.resize(want, 0);
        }
        buf[..self.tail.len()].copy_from_slice(&self.tail);
        buf
    }

    /// Reads once from `reader`, appending the frames that are complete. Returns the bytes
    /// read: 0 at end of input.
    pub(crate) fn read(
        &mut self,
        reader: &mut dyn Read,
        out: &mut Vec<Frame>,
    ) -> io::Result<usize> {
        let mut buf = self.buffer();
        let start = self.tail.len();
        let room = start..start + self.read_bytes;
        let n = loop {
            match reader.read(&mut buf[room.clone()]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.cut(buf, start, start + n, out);
        Ok(n)
    }

    /// Frames from bytes the caller already has.
    #[cfg(test)]
    pub(crate) fn push(&mut self, bytes: &[u8], out: &mut Vec<Frame>) {
        let mut buf = std::mem::take(&mut self.tail);
        let start = buf.len();
        buf.extend_from_slice(bytes);
        let end = buf.len();
        self.cut(buf, start, end, out);
    }

    /// `buf[..fresh]` is the old tail (it holds no newline), `buf[fresh..end]` was just read.
    fn cut(&mut self, buf: Vec<u8>, mut fresh: usize, end: usize, out: &mut Vec<Frame>) {
        let mut begin = 0;
        if let Some(mut skipped) = self.skipping.take() {
            let Some(at) = memchr::memchr(b'\n', &buf[..end]) else {
                skipped.extend(&buf[..end]);
                self.skipping = Some(skipped);
                self.tail.clear();
                self.recycle(buf);
                return;
            };
            skipped.extend(&buf[..at]);
            out.push(skipped.frame(true));
            (begin, fresh) = (at + 1, at + 1);
        }
        let lines_end = memchr::memrchr(b'\n', &buf[fresh..end]).map(|at| fresh + at + 1);
        self.tail.clear();
        self.tail.extend_from_slice(&buf[lines_end.unwrap_or(begin).max(begin)..end]);
        match lines_end {
            Some(lines_end) => {
                let home = self.spare.clone();
                let lent = Bytes::from_owner(Lent { data: buf, len: lines_end, home });
                out.push(Frame::Lines(lent.slice(begin..)));
            }
            None => self.recycle(buf),
        }
        if tail_body(&self.tail) > self.max_line_bytes {
            self.skipping = Some(Skipped::new(&self.tail));
            self.tail.clear();
        }
    }

    fn recycle(&self, buf: Vec<u8>) {
        self.spare.put(buf);
    }

    /// At end of input: the last line if it had no newline, or the long line being skipped.
    pub(crate) fn finish(&mut self, out: &mut Vec<Frame>) {
        if let Some(skipped) = self.skipping.take() {
            out.push(skipped.frame(false));
        }
        if !self.tail.is_empty() {
            out.push(Frame::Lines(Bytes::from(std::mem::take(&mut self.tail))));
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
                Frame::Oversize { prefix, len, taken } => {
                    format!("O:{}:{len}/{taken}", String::from_utf8_lossy(&prefix[..3]))
                }
                Frame::Records { .. } => unreachable!("a framer cuts lines"),
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
        assert_eq!(got, ["L:ok\n", "O:xxx:60/61", "L:next\n"]);
    }

    #[test]
    fn long_last_line_without_newline() {
        assert_eq!(frames(&[&[b'y'; 50]], 20), ["O:yyy:50/50"]);
    }

    /// Each line's verdict as the pipeline reaches it: its length, `Ok` when it is within
    /// `max`, `Err` when it is refused as too long.
    fn verdicts(frames: &[Frame], max: usize) -> Vec<Result<usize, usize>> {
        let mut all = Vec::new();
        for frame in frames {
            match frame {
                Frame::Lines(bytes) => {
                    let judged = lines(bytes).map(|(line, _)| line.len());
                    all.extend(judged.map(|len| if len <= max { Ok(len) } else { Err(len) }));
                }
                Frame::Oversize { len, .. } => all.push(Err(*len as usize)),
                Frame::Records { .. } => unreachable!("a framer cuts lines"),
            }
        }
        all
    }

    /// The bytes the frames say they took in the stream.
    fn counted(frames: &[Frame]) -> u64 {
        let taken = |frame: &Frame| match frame {
            Frame::Lines(bytes) => lines(bytes).map(|(_, taken)| taken).sum(),
            Frame::Oversize { taken, .. } => *taken,
            Frame::Records { .. } => unreachable!("a framer cuts lines"),
        };
        frames.iter().map(taken).sum()
    }

    /// The frames of `input` read `read_bytes` at a time.
    fn read_in(input: &[u8], max: usize, read_bytes: usize) -> Vec<Frame> {
        let mut framer = Framer::new(max, read_bytes);
        let (mut out, mut reader) = (Vec::new(), input);
        while framer.read(&mut reader, &mut out).unwrap() > 0 {}
        framer.finish(&mut out);
        out
    }

    /// The frames of `input` arriving in two pieces, split at `at`.
    fn split_at(input: &[u8], max: usize, at: usize) -> Vec<Frame> {
        let mut framer = Framer::new(max, 16);
        let mut out = Vec::new();
        framer.push(&input[..at], &mut out);
        framer.push(&input[at..], &mut out);
        framer.finish(&mut out);
        out
    }

    const MAX: usize = 8;

    /// A named input and the verdict on each of its lines.
    type Edge = (&'static str, &'static [u8], &'static [Result<usize, usize>]);

    /// Lines at and around the limit of [`MAX`] bytes, with CRs where a read may end.
    const EDGES: &[Edge] = &[
        ("lf line at the limit", b"12345678\nx", &[Ok(8), Ok(1)]),
        ("crlf line at the limit", b"12345678\r\nnext\n", &[Ok(8), Ok(4)]),
        ("last crlf line at the limit", b"12345678\r\n", &[Ok(8)]),
        ("last line at the limit ending in a cr", b"ok\n12345678\r", &[Ok(2), Ok(8)]),
        ("crlf line one over the limit", b"123456789\r\nok\r\n", &[Err(9), Ok(2)]),
        ("last line one over ending in a cr", b"123456789\r", &[Err(9)]),
        ("last line too long without a newline", b"ok\n123456789012", &[Ok(2), Err(12)]),
        ("two crs before the newline", b"12345678\r\r\nok\n", &[Err(9), Ok(2)]),
        ("a cr inside a line", b"1234567\r8\r\n", &[Err(9)]),
        ("a cr at the limit then more", b"12345678\rx\nok\n", &[Err(10), Ok(2)]),
        ("a long line then one at the limit", b"123456789012\r\n12345678\r\n", &[Err(12), Ok(8)]),
        ("empty crlf lines and a lone cr", b"\r\n\r\n\r", &[Ok(0), Ok(0), Ok(0)]),
    ];

    #[test]
    fn edge_case_names_are_unique() {
        let mut names: Vec<_> = EDGES.iter().map(|(name, ..)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), EDGES.len());
    }

    #[test]
    fn a_line_is_judged_alike_wherever_reads_end() {
        for &(name, input, want) in EDGES {
            let whole = verdicts(&[Frame::Lines(Bytes::from_static(input))], MAX);
            assert_eq!(whole, want, "{name}: as one piece");
            for read_bytes in 1..=input.len() {
                let got = verdicts(&read_in(input, MAX, read_bytes), MAX);
                assert_eq!(got, want, "{name}: reads of {read_bytes} bytes");
            }
            for at in 0..=input.len() {
                assert_eq!(verdicts(&split_at(input, MAX, at), MAX), want, "{name}: split at {at}");
            }
        }
    }

    #[test]
    fn every_byte_is_counted_once_wherever_reads_end() {
        for &(name, input, _) in EDGES {
            for read_bytes in 1..=input.len() {
                let got = counted(&read_in(input, MAX, read_bytes));
                assert_eq!(got, input.len() as u64, "{name}: reads of {read_bytes} bytes");
            }
            for at in 0..=input.len() {
                let got = counted(&split_at(input, MAX, at));
                assert_eq!(got, input.len() as u64, "{name}: split at {at}");
            }
        }
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
                Frame::Records { .. } => unreachable!("a framer cuts lines"),
            })
            .collect();
        assert_eq!(text.concat(), "one\ntwo\nthree");
    }
}
