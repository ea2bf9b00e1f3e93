//! Secret masking: credentials in a forwarded line are replaced by `***`.
//!
//! Masking works on the output line as written, JSON escapes and all, so that every byte
//! outside a secret stays as it was. One Aho-Corasick automaton over the detectors'
//! trigger literals looks at each line; only the detectors whose triggers occur run their
//! regexes. A secret is replaced only where it lies inside one JSON string and does not
//! cut an escape sequence in two, so the line stays valid JSON.

use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use regex::bytes::Regex;
use serde::Deserialize;

/// What a secret is replaced with.
pub const MARKER: &[u8] = b"***";

/// `[mask]`: which detectors run, and extra patterns.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MaskConfig {
    pub enabled: bool,
    /// Detector names; the default is every one of [`DETECTORS`].
    pub detectors: Vec<String>,
    pub extra: Vec<ExtraPattern>,
}

impl Default for MaskConfig {
    fn default() -> Self {
        let detectors = DETECTORS.iter().map(|d| d.name.to_string()).collect();
        MaskConfig { enabled: true, detectors, extra: Vec::new() }
    }
}

/// `[[mask.extra]]`: a pattern of the user's own. The named group `secret` (or, without
/// it, the whole match) is masked. Without triggers it runs on every forwarded line.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExtraPattern {
    pub name: String,
    pub pattern: String,
    #[serde(default)]
    pub triggers: Vec<String>,
}

/// A masking configuration that cannot be built, naming the detector or pattern.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("mask.detectors: unknown detector {0:?} (known: {known})", known = known())]
    UnknownDetector(String),
    #[error("mask.extra {name:?}: {message}")]
    BadPattern { name: String, message: String },
}

fn known() -> String {
    DETECTORS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")
}

/// Which values a regex may take as a secret.
#[derive(Clone, Copy, Debug)]
enum Check {
    Any,
    /// Not a plain word: after `--password ` or `Basic ` an English word is prose.
    NotWord,
}

/// A shipped detector: its name, the literals that wake it, its regexes.
pub struct Detector {
    pub name: &'static str,
    pub about: &'static str,
    triggers: &'static [&'static str],
    patterns: &'static [(&'static str, Check)],
}

/// Value characters of a secret written without quotes.
macro_rules! bare {
    () => {
        r#"[^\s"\\&,;]+"#
    };
}

/// Every shipped detector, in the order the README lists them.
pub const DETECTORS: &[Detector] = &[
    Detector {
        name: "flag",
        about: "--token, --password, --client-secret, --bootstrap-token and similar flags",
        triggers: &[
            "--token",
            "--password",
            "--passwd",
            "--client-secret",
            "--bootstrap-token",
            "--discovery-token",
            "--secret",
            "--api-key",
            "--access-key",
            "--auth-token",
        ],
        patterns: &[
            (
                concat!(
                    r"(?i:--(?:token|password|passwd|client-secret|bootstrap-token|",
                    r"discovery-token|secret|secret-key|api-key|access-key|auth-token))",
                    r#"=(?:\\")?(?P<secret>[^\s"\\]+)"#
                ),
                Check::Any,
            ),
            (
                concat!(
                    r"(?i:--(?:token|password|passwd|client-secret|bootstrap-token|",
                    r"discovery-token|secret|secret-key|api-key|access-key|auth-token))",
                    r#"[ \t]+(?P<secret>[^\s"\\-][^\s"\\]*)"#
                ),
                Check::NotWord,
            ),
        ],
    },
    Detector {
        name: "assignment",
        about: "password=, token=, secret=, api_key= values and \"password\":\"...\" fields",
        triggers: &["password", "passwd", "secret", "token", "api_key", "apikey"],
        patterns: &[
            (
                concat!(
                    r"\b(?i:password|passwd|secret|client_secret|token|access_token|",
                    r"refresh_token|id_token|auth_token|api_key|apikey|secret_key)",
                    r#"\s*=(?:\\")?(?P<secret>"#,
                    bare!(),
                    ")"
                ),
                Check::Any,
            ),
            (
                concat!(
                    r#""(?i:password|passwd|secret|client_secret|token|access_token|"#,
                    r#"refresh_token|id_token|auth_token|api_key|apikey|secret_key)"\s*:\s*"#,
                    r#""(?P<secret>(?:[^"\\]|\\.)+)""#
                ),
                Check::Any,
            ),
            (
                concat!(
                    r#"\\"(?i:password|passwd|secret|client_secret|token|access_token|"#,
                    r#"refresh_token|id_token|auth_token|api_key|apikey|secret_key)\\"\s*:\s*"#,
                    r#"\\"(?P<secret>[^"\\]+)"#
                ),
                Check::Any,
            ),
        ],
    },
    Detector {
        name: "url_credentials",
        about: "the password of user:password@ in a URL",
        triggers: &["://"],
        patterns: &[(
            r#"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@:"\\]*:(?P<secret>[^\s/?#@"\\]+)@"#,
            Check::Any,
        )],
    },
    Detector {
        name: "auth_header",
        about: "Authorization: Bearer and Basic credentials",
        triggers: &["bearer", "basic"],
        patterns: &[(
            r"\b(?i:bearer|basic)[ \t]+(?P<secret>[A-Za-z0-9._~+/=-]{8,})",
            Check::NotWord,
        )],
    },
    Detector {
        name: "private_key",
        about: "PEM private keys, whole or cut short (GCP service-account private_key too)",
        triggers: &["private key-----"],
        patterns: &[(
            concat!(
                r#"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----(?P<secret>[^"]*?)"#,
                r#"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|"|$)"#
            ),
            Check::Any,
        )],
    },
    Detector {
        name: "aws_key",
        about: "AWS access key ids (AKIA..., ASIA...) and the secret keys named or next to them",
        triggers: &["akia", "asia", "secret_access_key", "secretaccesskey"],
        patterns: &[
            (r"\b(?:AKIA|ASIA)(?P<secret>[A-Z0-9]{16})\b", Check::Any),
            (
                concat!(
                    r#"(?i:secret_?access_?key)(?:\\?")?\s*[=:]\s*(?:\\?")?"#,
                    r"(?P<secret>[A-Za-z0-9/+=]{40})"
                ),
                Check::Any,
            ),
            (
                concat!(
                    r#"\b(?:AKIA|ASIA)[A-Z0-9]{16}[^"]{0,80}?[^A-Za-z0-9/+]"#,
                    r"(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"
                ),
                Check::Any,
            ),
        ],
    },
    Detector {
        name: "gcp_key",
        about: "GCP service-account private_key_id and API keys (AIza...)",
        triggers: &["private_key_id", "aiza"],
        patterns: &[
            (r#"private_key_id\\?"\s*:\s*\\?"(?P<secret>[0-9a-f]{40})"#, Check::Any),
            (r"\bAIza(?P<secret>[0-9A-Za-z_-]{35})", Check::Any),
        ],
    },
    Detector {
        name: "azure_key",
        about: "Azure storage AccountKey= and SharedAccessKey=, SAS signatures (sig=)",
        triggers: &["accountkey=", "sharedaccesskey=", "sig="],
        patterns: &[
            (r"(?i:\b(?:AccountKey|SharedAccessKey))=(?P<secret>[A-Za-z0-9+/=]{20,})", Check::Any),
            (r"[?&](?i:sig)=(?P<secret>[A-Za-z0-9%+/=_-]{10,})", Check::Any),
        ],
    },
    Detector {
        name: "jwt",
        about: "JSON Web Tokens (eyJ...eyJ...)",
        triggers: &["eyj"],
        patterns: &[(
            r"\b(?P<secret>eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)",
            Check::Any,
        )],
    },
    Detector {
        name: "bootstrap_token",
        about: "Kubernetes bootstrap tokens (abcdef.0123456789abcdef) after token or bootstrap",
        triggers: &["token", "bootstrap"],
        patterns: &[(
            concat!(
                r#"(?i:bootstrap|token)[^\s"\\]{0,24}(?:[\s=:]|\\")+"#,
                r"(?P<secret>[a-z0-9]{6}\.[a-z0-9]{16})\b"
            ),
            Check::Any,
        )],
    },
];

/// One regex of a detector. A shipped one is compiled when a line first wakes its
/// detector: compiling them all would double the time a run takes to start, and most runs
/// wake only a few. A user's pattern is compiled when the configuration loads, so an
/// error in it stops the run before it starts.
struct Compiled {
    /// The pattern as it is compiled.
    pattern: String,
    regex: OnceLock<Regex>,
    check: Check,
}

impl Compiled {
    fn shipped(pattern: &str, check: Check) -> Compiled {
        // ASCII classes make small, fast automata. A secret still ends on a character
        // boundary: its classes take every non-ASCII byte, and it is bounded by ASCII.
        Compiled { pattern: format!("(?-u){pattern}"), regex: OnceLock::new(), check }
    }

    fn regex(&self) -> &Regex {
        self.regex.get_or_init(|| Regex::new(&self.pattern).expect("shipped patterns compile"))
    }
}

/// The detectors of one configuration, built once and shared by every worker.
pub struct Masker {
    /// `None` when masking is off.
    prefilter: Option<AhoCorasick>,
    /// Which detector each trigger literal wakes.
    trigger_owner: Vec<usize>,
    /// Per detector, its regexes.
    detectors: Vec<Vec<Compiled>>,
    /// Detectors without triggers, run on every line.
    always: Vec<usize>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (detectors, always) = (self.detectors.len(), self.always.len());
        f.debug_struct("Masker")
            .field("enabled", &self.enabled())
            .field("detectors", &detectors)
            .field("triggers", &self.trigger_owner.len())
            .field("always", &always)
            .finish()
    }
}

/// One worker's buffers for masking.
#[derive(Default)]
pub struct MaskScratch {
    class: Vec<Class>,
    spans: Vec<(usize, usize)>,
    woken: Vec<bool>,
    out: Vec<u8>,
}

impl Masker {
    /// No masking at all.
    pub fn off() -> Masker {
        Masker { prefilter: None, trigger_owner: Vec::new(), detectors: Vec::new(), always: vec![] }
    }

    pub fn new(config: &MaskConfig) -> Result<Masker, MaskError> {
        if !config.enabled {
            return Ok(Masker::off());
        }
        let mut triggers: Vec<String> = Vec::new();
        let mut masker = Masker::off();
        for name in &config.detectors {
            let detector = DETECTORS
                .iter()
                .find(|d| d.name == name)
                .ok_or_else(|| MaskError::UnknownDetector(name.clone()))?;
            let regexes = detector.patterns.iter().map(|&(p, check)| Compiled::shipped(p, check));
            let triggers_of = detector.triggers.iter().map(|t| t.to_string()).collect();
            masker.add(regexes.collect(), triggers_of, &mut triggers);
        }
        for extra in &config.extra {
            let bad = |message: String| MaskError::BadPattern { name: extra.name.clone(), message };
            let regex = Regex::new(&extra.pattern).map_err(|e| bad(e.to_string()))?;
            if extra.triggers.iter().any(String::is_empty) {
                return Err(bad("a trigger is empty".into()));
            }
            let (pattern, regex) = (extra.pattern.clone(), OnceLock::from(regex));
            let compiled = vec![Compiled { pattern, regex, check: Check::Any }];
            masker.add(compiled, extra.triggers.clone(), &mut triggers);
        }
        // A DFA: a few dozen literals make a small one, and it reads every forwarded line.
        let prefilter = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .kind(Some(AhoCorasickKind::DFA))
            .match_kind(MatchKind::Standard)
            .build(&triggers)
            .map_err(|e| MaskError::BadPattern {
                name: "triggers".into(),
                message: e.to_string(),
            })?;
        masker.prefilter = Some(prefilter);
        Ok(masker)
    }

    fn add(&mut self, regexes: Vec<Compiled>, triggers_of: Vec<String>, all: &mut Vec<String>) {
        let index = self.detectors.len();
        if triggers_of.is_empty() {
            self.always.push(index);
        }
        for trigger in triggers_of {
            all.push(trigger);
            self.trigger_owner.push(index);
        }
        self.detectors.push(regexes);
    }

    pub fn enabled(&self) -> bool {
        self.prefilter.is_some()
    }

    /// Masks the secrets in `out[start..]`, one JSON line, and returns how many it masked.
    pub fn mask(&self, out: &mut Vec<u8>, start: usize, scratch: &mut MaskScratch) -> u64 {
        let Some(prefilter) = &self.prefilter else { return 0 };
        let line = &out[start..];
        // Most lines hold no trigger: one search that may skip ahead answers for them.
        if self.always.is_empty() && !prefilter.is_match(line) {
            return 0;
        }
        scratch.woken.clear();
        scratch.woken.resize(self.detectors.len(), false);
        let mut any = false;
        for hit in prefilter.find_overlapping_iter(line) {
            scratch.woken[self.trigger_owner[hit.pattern().as_usize()]] = true;
            any = true;
        }
        for &index in &self.always {
            scratch.woken[index] = true;
            any = true;
        }
        if !any {
            return 0;
        }

        scratch.spans.clear();
        for (index, regexes) in self.detectors.iter().enumerate() {
            if scratch.woken[index] {
                find_secrets(regexes, line, &mut scratch.spans);
            }
        }
        if scratch.spans.is_empty() {
            return 0;
        }
        classify(line, &mut scratch.class);
        let masked = keep_maskable(&mut scratch.spans, &scratch.class);
        if masked == 0 {
            return 0;
        }
        rewrite(out, start, &scratch.spans, &mut scratch.out);
        masked
    }
}

fn find_secrets(regexes: &[Compiled], line: &[u8], spans: &mut Vec<(usize, usize)>) {
    for compiled in regexes {
        for captures in compiled.regex().captures_iter(line) {
            let found = captures.name("secret").or_else(|| captures.get(0));
            let Some(found) = found.filter(|m| !m.is_empty()) else { continue };
            if matches!(compiled.check, Check::NotWord) && is_word(found.as_bytes()) {
                continue;
            }
            spans.push((found.start(), found.end()));
        }
    }
}

/// A word of prose: letters only, lowercase after the first.
fn is_word(value: &[u8]) -> bool {
    value.iter().all(u8::is_ascii_alphabetic) && value[1..].iter().all(u8::is_ascii_lowercase)
}

/// Where each byte of a JSON line stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Outside any string, or a string's quote.
    Outside,
    /// The first byte of a character inside a string (a backslash starting an escape too).
    Start,
    /// Inside a string, within an escape sequence after its backslash.
    Escape,
}

/// Classifies every byte of `line`, a valid JSON text. Keys count as outside: a masked
/// key would change the record's structure (two keys masked alike would collide).
fn classify(line: &[u8], class: &mut Vec<Class>) {
    class.clear();
    class.resize(line.len(), Class::Outside);
    let mut i = 0;
    let mut inside = false;
    let mut opened = 0;
    while i < line.len() {
        match (inside, line[i]) {
            (false, b'"') => (inside, opened) = (true, i),
            (false, _) => {}
            (true, b'"') => {
                inside = false;
                let after = line[i + 1..].iter().find(|b| !b.is_ascii_whitespace());
                if after == Some(&b':') {
                    class[opened..i].fill(Class::Outside);
                }
            }
            (true, b'\\') => {
                class[i] = Class::Start;
                let length = if line.get(i + 1) == Some(&b'u') { 5 } else { 1 };
                let end = (i + 1 + length).min(line.len());
                class[i + 1..end].fill(Class::Escape);
                i = end;
                continue;
            }
            (true, _) => class[i] = Class::Start,
        }
        i += 1;
    }
}

/// Shrinks each span to whole characters, drops those that leave one string, merges
/// overlaps; returns how many secrets remain.
fn keep_maskable(spans: &mut Vec<(usize, usize)>, class: &[Class]) -> u64 {
    for span in spans.iter_mut() {
        let (mut start, mut end) = *span;
        while start < end && class[start] == Class::Escape {
            start += 1;
        }
        while end > start && end < class.len() && class[end] == Class::Escape {
            end -= 1;
        }
        let inside = start < end && class[start..end].iter().all(|&c| c != Class::Outside);
        *span = if inside { (start, end) } else { (0, 0) };
    }
    spans.retain(|&(start, end)| start < end);
    spans.sort_unstable();

    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for &(start, end) in spans.iter() {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    *spans = merged;
    spans.len() as u64
}

/// Replaces each span of `out[start..]` by the marker.
fn rewrite(out: &mut Vec<u8>, start: usize, spans: &[(usize, usize)], buffer: &mut Vec<u8>) {
    buffer.clear();
    let line = &out[start..];
    let mut at = 0;
    for &(from, to) in spans {
        buffer.extend_from_slice(&line[at..from]);
        buffer.extend_from_slice(MARKER);
        at = to;
    }
    buffer.extend_from_slice(&line[at..]);
    out.truncate(start);
    out.extend_from_slice(buffer);
}

#[cfg(test)]
mod tests;
