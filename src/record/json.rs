//! A validating scanner for one JSON object per line.
//!
//! It checks the whole line against RFC 8259 and indexes the top-level fields without
//! building any value: chatter is judged from the index alone, and only a record that is
//! tagged ever has its strings decoded. Strings are skipped eight bytes at a time.

use std::ops::Range;

use super::Malformed;

/// serde_json refuses deeper nesting too; the same limit keeps both decoders in step.
pub(crate) const MAX_DEPTH: usize = 128;

/// What kind of JSON value a top-level field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    String,
    Array,
    Object,
    Number,
    Bool,
    Null,
}

/// One top-level field: byte ranges into the line.
#[derive(Clone, Debug)]
pub(crate) struct Field {
    /// The key between its quotes, still escaped.
    pub(crate) key: Range<usize>,
    /// The value as written; for a string, between its quotes and still escaped.
    pub(crate) value: Range<usize>,
    /// From the key's opening quote to the end of the value.
    pub(crate) span: Range<usize>,
    pub(crate) kind: Kind,
    /// A string value that holds a backslash needs decoding before use.
    pub(crate) escaped: bool,
}

/// Scans `line` as one JSON object, filling `fields` with its top-level fields.
/// Returns the position of the closing brace.
pub(crate) fn scan_object(line: &[u8], fields: &mut Vec<Field>) -> Result<usize, Malformed> {
    fields.clear();
    if std::str::from_utf8(line).is_err() {
        return Err(Malformed::InvalidUtf8);
    }
    let mut s = Scanner { line, pos: 0 };
    s.skip_ws();
    match s.peek() {
        None => return Err(Malformed::Empty),
        Some(b'{') => {}
        Some(_) => {
            // Valid JSON that is not an object is told apart from garbage.
            return match s.value(0) {
                Ok(_) if s.at_end_after_ws() => Err(Malformed::NotObject),
                Ok(_) | Err(_) => Err(s.error()),
            };
        }
    }
    s.pos += 1;
    let close = s.members(fields)?;
    if !s.at_end_after_ws() {
        return Err(Malformed::Syntax);
    }
    Ok(close)
}

struct Scanner<'a> {
    line: &'a [u8],
    pos: usize,
}

/// Why a scan stopped, before it is turned into a reason.
struct Stop;

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.line.get(self.pos).copied()
    }

    /// A scan that ran off the end of the line was truncated; anything else is bad syntax.
    fn error(&self) -> Malformed {
        if self.pos >= self.line.len() {
            Malformed::Truncated
        } else {
            Malformed::Syntax
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn at_end_after_ws(&mut self) -> bool {
        self.skip_ws();
        self.pos == self.line.len()
    }

    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error())
        }
    }

    /// The top-level members after the opening brace, up to and including the closing one.
    fn members(&mut self, fields: &mut Vec<Field>) -> Result<usize, Malformed> {
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(self.pos - 1);
        }
        loop {
            self.skip_ws();
            let start = self.pos;
            if self.peek() != Some(b'"') {
                return Err(self.error());
            }
            let (key, _) = self.string().map_err(|_| self.error())?;
            self.expect(b':')?;
            self.skip_ws();
            let value_start = self.pos;
            let (kind, escaped) = self.value(1).map_err(|_| self.error())?;
            let value = match kind {
                Kind::String => value_start + 1..self.pos - 1,
                _ => value_start..self.pos,
            };
            fields.push(Field { key, value, span: start..self.pos, kind, escaped });

            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(self.pos - 1);
                }
                _ => return Err(self.error()),
            }
        }
    }

    /// Any value. Nested containers are walked with a depth count, not recursion.
    fn value(&mut self, depth: usize) -> Result<(Kind, bool), Stop> {
        match self.peek().ok_or(Stop)? {
            b'"' => self.string().map(|(_, escaped)| (Kind::String, escaped)),
            b'{' | b'[' => {
                let kind = if self.peek() == Some(b'{') { Kind::Object } else { Kind::Array };
                self.container(depth)?;
                Ok((kind, false))
            }
            b't' => self.literal(b"true").map(|()| (Kind::Bool, false)),
            b'f' => self.literal(b"false").map(|()| (Kind::Bool, false)),
            b'n' => self.literal(b"null").map(|()| (Kind::Null, false)),
            b'-' | b'0'..=b'9' => self.number().map(|()| (Kind::Number, false)),
            _ => Err(Stop),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Stop> {
        if self.line[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else {
            // A prefix of the word at the end of the line is a truncation.
            let rest = &self.line[self.pos..];
            if word.starts_with(rest) {
                self.pos = self.line.len();
            }
            Err(Stop)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), Stop> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Stop),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(Stop);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(Stop);
            }
        }
        Ok(())
    }

    /// A string at `pos` (on its opening quote). Returns the range between the quotes and
    /// whether it holds escapes.
    fn string(&mut self) -> Result<(Range<usize>, bool), Stop> {
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        loop {
            self.pos += find_special(&self.line[self.pos..]).ok_or_else(|| {
                self.pos = self.line.len();
                Stop
            })?;
            match self.line[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Ok((start..self.pos - 1, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                _ => return Err(Stop),
            }
        }
    }

    /// One escape sequence at `pos` (on its backslash).
    fn escape(&mut self) -> Result<(), Stop> {
        let Some(&next) = self.line.get(self.pos + 1) else {
            self.pos = self.line.len();
            return Err(Stop);
        };
        match next {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                self.pos += 2;
                Ok(())
            }
            b'u' => {
                let (_, used) = unicode_escape(&self.line[self.pos..]).map_err(|short| {
                    if short {
                        self.pos = self.line.len();
                    }
                    Stop
                })?;
                self.pos += used;
                Ok(())
            }
            _ => Err(Stop),
        }
    }

    /// An array or object at `pos`, skipped whole with a stack of open brackets rather
    /// than recursion, so hostile nesting costs no stack.
    fn container(&mut self, depth: usize) -> Result<(), Stop> {
        let mut stack: Vec<u8> = Vec::new();
        loop {
            // Here a value starts.
            match self.peek().ok_or(Stop)? {
                open @ (b'{' | b'[') => {
                    if depth + stack.len() >= MAX_DEPTH {
                        return Err(Stop);
                    }
                    stack.push(open);
                    self.pos += 1;
                    self.skip_ws();
                    if self.peek() != Some(closing(open)) {
                        self.member_start(&stack)?;
                        continue;
                    }
                    self.pos += 1;
                    stack.pop();
                }
                _ => {
                    self.value(depth + stack.len())?;
                }
            }

            // After a value: separators and closing brackets until the next value starts.
            loop {
                self.skip_ws();
                let Some(&open) = stack.last() else {
                    return Ok(());
                };
                match self.peek().ok_or(Stop)? {
                    b',' => {
                        self.pos += 1;
                        self.skip_ws();
                        self.member_start(&stack)?;
                        break;
                    }
                    byte if byte == closing(open) => {
                        self.pos += 1;
                        stack.pop();
                    }
                    _ => return Err(Stop),
                }
            }
        }
    }

    /// Inside an object, a member starts with its key and colon; inside an array, at once.
    fn member_start(&mut self, stack: &[u8]) -> Result<(), Stop> {
        if stack.last() == Some(&b'{') {
            if self.peek() != Some(b'"') {
                return Err(Stop);
            }
            self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(Stop);
            }
            self.pos += 1;
            self.skip_ws();
        }
        Ok(())
    }
}

fn closing(open: u8) -> u8 {
    if open == b'{' {
        b'}'
    } else {
        b']'
    }
}

/// Decodes a `\uXXXX` escape (with its low surrogate when it is a high one) at the start of
/// `bytes`. Returns the character and the bytes used; the error says whether the line ended.
fn unicode_escape(bytes: &[u8]) -> Result<(char, usize), bool> {
    let unit = |at: usize| -> Result<u32, bool> {
        let hex = bytes.get(at..at + 4).ok_or(true)?;
        // from_str_radix alone would take a sign: `\u+777` is not an escape.
        if !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(false);
        }
        let text = std::str::from_utf8(hex).map_err(|_| false)?;
        u32::from_str_radix(text, 16).map_err(|_| false)
    };
    let first = unit(2)?;
    match first {
        0xD800..=0xDBFF => {
            match bytes.get(6..8) {
                Some(b"\\u") => {}
                Some(_) => return Err(false),
                None => return Err(true),
            }
            let second = unit(8)?;
            if !(0xDC00..=0xDFFF).contains(&second) {
                return Err(false);
            }
            let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
            char::from_u32(code).map(|c| (c, 12)).ok_or(false)
        }
        0xDC00..=0xDFFF => Err(false),
        _ => char::from_u32(first).map(|c| (c, 6)).ok_or(false),
    }
}

/// Undoes the escapes of a string's raw bytes (between its quotes), appending to `out`.
/// The scanner has already checked every escape, so this cannot fail on scanned input.
pub(crate) fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    let mut rest = raw;
    while let Some(at) = memchr::memchr(b'\\', rest) {
        out.extend_from_slice(&rest[..at]);
        let used = match rest.get(at + 1) {
            Some(b'n') => push(out, b'\n'),
            Some(b't') => push(out, b'\t'),
            Some(b'r') => push(out, b'\r'),
            Some(b'b') => push(out, 0x08),
            Some(b'f') => push(out, 0x0C),
            Some(b'u') => match unicode_escape(&rest[at..]) {
                Ok((c, used)) => {
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    used
                }
                Err(_) => push(out, b'\\') - 1,
            },
            Some(&other) => push(out, other),
            None => push(out, b'\\') - 1,
        };
        rest = &rest[at + used..];
    }
    out.extend_from_slice(rest);
}

fn push(out: &mut Vec<u8>, byte: u8) -> usize {
    out.push(byte);
    2
}

/// Position of the first quote, backslash or control character, eight bytes at a time.
fn find_special(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;

    let mut chunks = bytes.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of eight"));
        // Bytes below 0x20, equal to '"', or equal to '\\'. The lowest flagged byte is always
        // a true one: borrows only flag bytes above a real match.
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let special = control | has_zero(word ^ (ONES * 0x22)) | has_zero(word ^ (ONES * 0x5C));
        if special != 0 {
            return Some(offset + special.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b < 0x20 || b == b'"' || b == b'\\')
        .map(|at| offset + at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(line: &str) -> Result<Vec<(String, Kind)>, Malformed> {
        let mut fields = Vec::new();
        scan_object(line.as_bytes(), &mut fields)?;
        Ok(fields.iter().map(|f| (line[f.key.clone()].to_string(), f.kind)).collect())
    }

    #[test]
    fn indexes_top_level_fields() {
        let line = r#"{"A":"x","B":[1,2,{"c":[]}],"C":null,"D":-1.5e3,"E":true,"F":{}}"#;
        let kinds: Vec<Kind> = scan(line).unwrap().into_iter().map(|(_, k)| k).collect();
        assert_eq!(
            kinds,
            [Kind::String, Kind::Array, Kind::Null, Kind::Number, Kind::Bool, Kind::Object]
        );
    }

    #[test]
    fn a_unicode_escape_takes_hex_digits_only() {
        // Found by fuzzing: u32::from_str_radix reads "+777" as a number.
        assert_eq!(scan(r#"{"M":"\u+777"}"#).err(), Some(Malformed::Syntax));
        assert_eq!(scan(r#"{"M":"\u-777"}"#).err(), Some(Malformed::Syntax));
        assert!(scan(r#"{"M":"\u00e9"}"#).is_ok());
    }

    #[test]
    fn string_value_range_excludes_quotes() {
        let line = r#"{ "MESSAGE" : "a \"b\"" }"#;
        let mut fields = Vec::new();
        let close = scan_object(line.as_bytes(), &mut fields).unwrap();
        assert_eq!(&line[fields[0].value.clone()], r#"a \"b\""#);
        assert!(fields[0].escaped);
        assert_eq!(close, line.len() - 1);
    }

    #[test]
    fn reasons_for_bad_lines() {
        let cases = [
            ("", Malformed::Empty),
            ("   ", Malformed::Empty),
            ("hello", Malformed::Syntax),
            ("[1,2]", Malformed::NotObject),
            ("\"text\"", Malformed::NotObject),
            ("42", Malformed::NotObject),
            (r#"{"A":"x""#, Malformed::Truncated),
            (r#"{"A":"x"#, Malformed::Truncated),
            (r#"{"A":[1,2"#, Malformed::Truncated),
            (r#"{"A":tru"#, Malformed::Truncated),
            (r#"{"A":"x"} trailing"#, Malformed::Syntax),
            (r#"{"A":"x",}"#, Malformed::Syntax),
            (r#"{"A":01}"#, Malformed::Syntax),
            (r#"{"A":"\x"}"#, Malformed::Syntax),
            (r#"{"A":"\ud800"}"#, Malformed::Syntax),
            ("{\"A\":\"tab\there\"}", Malformed::Syntax),
            (r#"{"A" "x"}"#, Malformed::Syntax),
            (r#"{"A":[1 2]}"#, Malformed::Syntax),
        ];
        for (line, want) in cases {
            assert_eq!(scan(line).unwrap_err(), want, "{line:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_its_own_reason() {
        let mut fields = Vec::new();
        let err = scan_object(b"{\"A\":\"\xff\"}", &mut fields).unwrap_err();
        assert_eq!(err, Malformed::InvalidUtf8);
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{{\"A\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(scan(&deep).unwrap_err(), Malformed::Syntax);
        let fine = format!("{{\"A\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(scan(&fine).is_ok());
    }

    #[test]
    fn unescape_undoes_every_escape() {
        let mut out = Vec::new();
        unescape(br#"q\" s\\ n\n t\t u\u00e9 p\ud83d\ude00 /\/"#, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "q\" s\\ n\n t\t u\u{e9} p\u{1F600} //");
    }

    #[test]
    fn find_special_agrees_with_a_plain_loop() {
        let text: Vec<u8> = (0u8..=255).cycle().take(1000).collect();
        for start in 0..300 {
            let slice = &text[start..];
            let want = slice.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
            assert_eq!(find_special(slice), want);
        }
    }

    #[test]
    fn agrees_with_serde_on_acceptance() {
        let lines = [
            r#"{"a":[{"b":[1,{"c":"d"}]},2]}"#,
            r#"{"a":[{"b":[1,{"c":"d"}]},2}"#,
            r#"{"a":[,1]}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":{"b" 1}}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":{}}"#,
            r#"{}"#,
        ];
        for line in lines {
            let ours = scan(line).is_ok();
            let serde = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line);
            assert_eq!(ours, serde.is_ok(), "{line}");
        }
    }
}
