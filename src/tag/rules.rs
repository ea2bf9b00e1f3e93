//! The rule file format: loading `rules/*.toml`, checking every rule, and reporting each
//! problem with its file, rule id and key.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use regex::bytes::Regex;
use serde::Deserialize;

use super::category::Category;
use super::component::Agents;

include!(concat!(env!("OUT_DIR"), "/shipped_rules.rs"));

/// A rule's stable id, `family.name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(String);

impl RuleId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The rule as a problem reason in node-problem-detector's CamelCase style:
    /// `image_pull.not_found` is `ImagePullNotFound`. Two ids that differ only in where
    /// `.` and `_` fall would share a reason; a test keeps the shipped ones apart.
    pub fn reason(&self) -> String {
        let words = self.0.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty());
        let mut reason = String::with_capacity(self.0.len());
        for word in words {
            let mut chars = word.chars();
            reason.extend(chars.next().map(|c| c.to_ascii_uppercase()));
            reason.push_str(chars.as_str());
        }
        reason
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// Named groups an `extract` regex may use, and the attribute each fills.
pub(crate) const GROUPS: &[(&str, &str)] = &[
    ("namespace", "k8s.namespace.name"),
    ("pod", "k8s.pod.name"),
    ("pod_uid", "k8s.pod.uid"),
    ("container", "k8s.container.name"),
    ("container_id", "container.id"),
    ("image", "container.image.name"),
    ("volume", "k8s.volume.name"),
    ("node", "k8s.node.name"),
];

pub(crate) const DEFAULT_PRIORITY: i32 = 50;

fn default_priority() -> i32 {
    DEFAULT_PRIORITY
}

/// One `[[rule]]` table as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSpec {
    pub(crate) id: String,
    pub(crate) category: String,
    pub(crate) severity: Severity,
    #[serde(default)]
    pub(crate) components: Vec<String>,
    #[serde(default = "default_priority")]
    pub(crate) priority: i32,
    pub(crate) patterns: Vec<String>,
    #[serde(default)]
    pub(crate) require: Vec<String>,
    #[serde(default)]
    pub(crate) veto: Vec<String>,
    #[serde(default)]
    pub(crate) extract: Vec<String>,
    pub(crate) summary: String,
    #[serde(default)]
    pub(crate) cause: Vec<String>,
    #[serde(default)]
    pub(crate) remediation: Vec<String>,
    #[serde(default)]
    pub(crate) examples: Vec<String>,
    #[serde(default)]
    pub(crate) near_misses: Vec<String>,
}

/// A checked rule, ready to compile.
#[derive(Debug)]
pub struct Rule {
    pub id: RuleId,
    pub category: Category,
    pub severity: Severity,
    pub(crate) agents: Agents,
    pub priority: i32,
    pub patterns: Vec<String>,
    /// Lowercased, for case-insensitive confirmation.
    pub(crate) require: Vec<Vec<u8>>,
    pub(crate) veto: Vec<Vec<u8>>,
    pub(crate) extract: Vec<Extractor>,
    pub summary: String,
    pub cause: Vec<String>,
    pub remediation: Vec<String>,
    pub examples: Vec<String>,
    pub near_misses: Vec<String>,
    /// The file the rule came from.
    pub file: String,
}

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub rule: Option<String>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(rule) = &self.rule {
            write!(f, ": rule {rule}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a rule set; loading refuses the set if there is any.
#[derive(Debug, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "{n} problem{} in the rules", if n == 1 { "" } else { "s" })?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

/// The shipped rule files, as `(file name, text)`.
pub fn shipped_sources() -> Vec<(String, String)> {
    SHIPPED_RULES.iter().map(|(name, text)| (name.to_string(), text.to_string())).collect()
}

/// The `*.toml` files of `dir`, sorted by name.
pub fn dir_sources(dir: &Path) -> Result<Vec<(String, String)>, RuleErrors> {
    let fail = |message: String| {
        RuleErrors(vec![RuleError {
            file: dir.display().to_string(),
            rule: None,
            key: None,
            message,
        }])
    };
    let entries = std::fs::read_dir(dir).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(fail("no *.toml rule files".into()));
    }
    let mut sources = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        sources.push((path.display().to_string(), text));
    }
    Ok(sources)
}

/// Parses and checks the rules of every file. Collects every problem before failing.
#[cfg(test)]
pub(crate) fn parse(sources: &[(String, String)]) -> Result<Vec<Rule>, RuleErrors> {
    let (specs, errors) = read(sources);
    check(&specs, errors)
}

/// The `[[rule]]` tables of every file that deserialize, each with its file, and the
/// problems of those that do not.
pub(crate) fn read(sources: &[(String, String)]) -> (Vec<(&str, RuleSpec)>, Vec<RuleError>) {
    let mut specs = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in sources {
        specs.extend(parse_file(file, text, &mut errors).into_iter().map(|s| (file.as_str(), s)));
    }
    (specs, errors)
}

/// Checks the rules read, adding their problems to `errors`. On success there is one rule
/// per spec, in order.
pub(crate) fn check(
    specs: &[(&str, RuleSpec)],
    mut errors: Vec<RuleError>,
) -> Result<Vec<Rule>, RuleErrors> {
    let mut rules: Vec<Rule> = Vec::new();
    // Rules often share an extractor: each distinct one is parsed, and compiled, once.
    let mut regexes = HashMap::new();
    for (file, spec) in specs {
        let mut check =
            Check { file, id: &spec.id, errors: &mut errors, regexes: &mut regexes, failed: false };
        if let Some(rule) = check.rule(spec) {
            rules.push(rule);
        }
    }

    // Over every rule read, so a duplicate is reported even when a copy has other problems.
    let mut ids: Vec<(&str, &str)> = specs.iter().map(|(file, s)| (s.id.as_str(), *file)).collect();
    ids.sort();
    for pair in ids.windows(2) {
        if pair[0].0 == pair[1].0 {
            errors.push(RuleError {
                file: pair[1].1.to_string(),
                rule: Some(pair[1].0.to_string()),
                key: Some("id".into()),
                message: format!("duplicate id, also in {}", pair[0].1),
            });
        }
    }
    if rules.is_empty() && errors.is_empty() {
        errors.push(RuleError {
            file: "rules".into(),
            rule: None,
            key: None,
            message: "no rules".into(),
        });
    }
    if errors.is_empty() {
        Ok(rules)
    } else {
        Err(RuleErrors(errors))
    }
}

/// The `[[rule]]` tables of one file that deserialize.
fn parse_file(file: &str, text: &str, errors: &mut Vec<RuleError>) -> Vec<RuleSpec> {
    let error = |rule: Option<String>, key: Option<String>, message: String| RuleError {
        file: file.to_string(),
        rule,
        key,
        message,
    };
    let table: toml::Table = match text.parse() {
        Ok(table) => table,
        Err(e) => {
            errors.push(error(None, None, e.to_string().trim_end().replace('\n', " ")));
            return Vec::new();
        }
    };
    for key in table.keys().filter(|k| *k != "rule") {
        errors.push(error(None, Some(key.clone()), "unknown top-level key".into()));
    }
    let Some(list) = table.get("rule") else {
        errors.push(error(None, Some("rule".into()), "no [[rule]] tables".into()));
        return Vec::new();
    };
    let Some(list) = list.as_array() else {
        errors.push(error(None, Some("rule".into()), "must be [[rule]] tables".into()));
        return Vec::new();
    };

    let mut specs = Vec::new();
    for (i, value) in list.iter().enumerate() {
        let id = value.get("id").and_then(|v| v.as_str()).map(str::to_string);
        let name = id.clone().unwrap_or_else(|| format!("#{}", i + 1));
        match value.clone().try_into::<RuleSpec>() {
            Ok(spec) => specs.push(spec),
            Err(e) => {
                let message = e.message().to_string();
                errors.push(error(Some(name), backticked(&message), message));
            }
        }
    }
    specs
}

/// The first `name` quoted in a serde message ("missing field `summary`").
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// Checks one rule, reporting each problem against its key.
struct Check<'a> {
    file: &'a str,
    id: &'a str,
    errors: &'a mut Vec<RuleError>,
    /// The extractors checked so far, by source.
    regexes: &'a mut HashMap<String, Extractor>,
    failed: bool,
}

impl Check<'_> {
    fn fail(&mut self, key: &str, message: String) {
        self.errors.push(RuleError {
            file: self.file.to_string(),
            rule: Some(self.id.to_string()),
            key: Some(key.to_string()),
            message,
        });
        self.failed = true;
    }

    fn rule(&mut self, spec: &RuleSpec) -> Option<Rule> {
        if !is_id(&spec.id) {
            self.fail("id", "must be `family.name` in lowercase letters, digits and _".into());
        }
        let category = Category::from_id(&spec.category);
        if category.is_none() {
            self.fail("category", format!("unknown category {:?}", spec.category));
        }
        let agents = self.agents(&spec.components);
        self.patterns(&spec.patterns);
        for (key, list) in [("patterns", &spec.patterns), ("require", &spec.require)] {
            if list.iter().any(|p| p.trim().is_empty()) {
                self.fail(key, "empty literal".into());
            }
        }
        if spec.veto.iter().any(|p| p.trim().is_empty()) {
            self.fail("veto", "empty literal".into());
        }
        if spec.summary.trim().is_empty() {
            self.fail("summary", "must not be empty".into());
        }
        let extract = self.extractors(&spec.extract);
        if self.failed {
            return None;
        }
        let lower =
            |list: &[String]| list.iter().map(|p| p.to_ascii_lowercase().into_bytes()).collect();
        Some(Rule {
            id: RuleId(spec.id.clone()),
            category: category?,
            severity: spec.severity,
            agents,
            priority: spec.priority,
            patterns: spec.patterns.clone(),
            require: lower(&spec.require),
            veto: lower(&spec.veto),
            extract,
            summary: spec.summary.clone(),
            cause: spec.cause.clone(),
            remediation: spec.remediation.clone(),
            examples: spec.examples.clone(),
            near_misses: spec.near_misses.clone(),
            file: self.file.to_string(),
        })
    }

    fn patterns(&mut self, patterns: &[String]) {
        if patterns.is_empty() {
            self.fail("patterns", "at least one pattern is needed".into());
        }
        // `kubetag rules patterns` prints one a line for `grep -F -f`: a newline would split
        // a pattern in two, and other control characters garble the list. A tab is printable.
        for pattern in patterns {
            if let Some(c) = pattern.chars().find(|c| c.is_control() && *c != '\t') {
                self.fail("patterns", format!("pattern {pattern:?} holds control character {c:?}"));
            }
        }
    }

    fn agents(&mut self, components: &[String]) -> Agents {
        if components.is_empty() {
            return Agents::ANY;
        }
        let mut agents = Agents::NONE;
        for name in components {
            match Agents::from_name(name) {
                Some(a) => agents = agents.union(a),
                None => {
                    let known: Vec<&str> = Agents::NAMES.iter().map(|(n, _)| *n).collect();
                    let message = format!("unknown component {name:?}, known: {known:?}");
                    self.fail("components", message);
                }
            }
        }
        agents
    }

    fn extractors(&mut self, sources: &[String]) -> Vec<Extractor> {
        let mut out = Vec::new();
        for source in sources {
            if let Some(extractor) = self.regexes.get(source) {
                out.push(extractor.clone());
                continue;
            }
            let problems = self.errors.len();
            let names = match group_names(source) {
                Ok(names) => names,
                Err(e) => {
                    self.fail("extract", format!("bad regex {source:?}: {e}"));
                    continue;
                }
            };
            if names.is_empty() {
                self.fail("extract", format!("regex {source:?} has no named group"));
            }
            for name in names {
                if !GROUPS.iter().any(|(group, _)| *group == name.as_str()) {
                    let known: Vec<&str> = GROUPS.iter().map(|(g, _)| *g).collect();
                    self.fail("extract", format!("unknown group {name:?}, known: {known:?}"));
                }
            }
            let extractor = Extractor::new(source);
            // Only a good one is reused: another rule with a bad one gets its own errors.
            if self.errors.len() == problems {
                self.regexes.insert(source.clone(), extractor.clone());
            }
            out.push(extractor);
        }
        out
    }
}

/// A rule's extractor. Its regex is parsed when the rules load and compiled the first time
/// a tagged record needs it: most rules tag nothing in a run, and compiling every one up
/// front was the longest part of start-up. Rules with the same source share one.
#[derive(Clone)]
pub(crate) struct Extractor(Arc<Lazy>);

struct Lazy {
    source: String,
    regex: OnceLock<Result<Regex, String>>,
}

impl Extractor {
    fn new(source: &str) -> Extractor {
        Extractor(Arc::new(Lazy { source: source.to_string(), regex: OnceLock::new() }))
    }

    /// The compiled regex, or `None` if it cannot be built. It parsed when the rules
    /// loaded, so only a limit on its compiled size is left to refuse it; `kubetag check`
    /// compiles every extractor to find those before a run.
    pub(crate) fn regex(&self) -> Option<&Regex> {
        self.compiled().as_ref().ok()
    }

    /// Why the regex cannot be compiled, compiling it if no record did yet.
    pub(crate) fn error(&self) -> Option<String> {
        let error = self.compiled().as_ref().err()?;
        Some(format!("extractor {:?} cannot be compiled: {error}", self.0.source))
    }

    fn compiled(&self) -> &Result<Regex, String> {
        let compile = || {
            Regex::new(&self.0.source).map_err(|e| {
                let source = &self.0.source;
                tracing::error!(regex = %source, error = %e, "an extractor cannot be compiled");
                e.to_string()
            })
        };
        self.0.regex.get_or_init(compile)
    }
}

impl Rule {
    /// Why each extractor that cannot be compiled is refused, compiling them all.
    pub(crate) fn extractor_errors(&self) -> impl Iterator<Item = String> + '_ {
        self.extract.iter().filter_map(Extractor::error)
    }
}

impl fmt::Debug for Extractor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Extractor({:?})", self.0.source)
    }
}

/// The names of the groups of `source`, parsed as the regex crate parses a bytes regex.
fn group_names(source: &str) -> Result<Vec<String>, String> {
    let mut parser = regex_syntax::ParserBuilder::new().utf8(false).build();
    let hir = parser.parse(source).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    collect_names(&hir, &mut names);
    Ok(names)
}

fn collect_names(hir: &regex_syntax::hir::Hir, names: &mut Vec<String>) {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Capture(capture) => {
            names.extend(capture.name.as_deref().map(str::to_string));
            collect_names(&capture.sub, names);
        }
        HirKind::Concat(all) | HirKind::Alternation(all) => {
            all.iter().for_each(|sub| collect_names(sub, names));
        }
        HirKind::Repetition(repetition) => collect_names(&repetition.sub, names),
        _ => {}
    }
}

fn is_id(id: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    matches!(id.split_once('.'), Some((family, name)) if part(family) && part(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[rule]]
id = "demo.one"
category = "image_pull"
severity = "error"
patterns = ["failed to pull image"]
summary = "a pull failed"
"#;

    fn errors_of(text: &str) -> Vec<RuleError> {
        parse(&[("demo.toml".to_string(), text.to_string())]).unwrap_err().0
    }

    #[test]
    fn a_good_file_loads() {
        let rules = parse(&[("demo.toml".into(), GOOD.into())]).unwrap();
        assert_eq!(rules[0].id.as_str(), "demo.one");
        assert_eq!(rules[0].priority, DEFAULT_PRIORITY);
    }

    #[test]
    fn problems_name_file_rule_and_key() {
        let text = GOOD.replace("image_pull", "nope").replace("summary = \"a pull failed\"", "");
        let errors = errors_of(&text);
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_deref()).collect();
        assert_eq!(keys, [Some("summary")]);
        assert_eq!(errors[0].rule.as_deref(), Some("demo.one"));

        let errors = errors_of(&GOOD.replace("image_pull", "nope"));
        assert_eq!(errors[0].key.as_deref(), Some("category"));
        assert_eq!(
            errors[0].to_string(),
            "demo.toml: rule demo.one: key category: unknown category \"nope\""
        );
    }

    #[test]
    fn every_problem_is_reported() {
        let text = format!(
            "{GOOD}\n[[rule]]\nid = \"Bad\"\ncategory = \"oom\"\nseverity = \"error\"\n\
             patterns = []\nsummary = \"x\"\nextract = ['(?P<colour>x)', '(']\n\
             components = [\"systemd\"]\n"
        );
        let errors = errors_of(&text);
        let keys: Vec<_> = errors.iter().filter_map(|e| e.key.as_deref()).collect();
        assert_eq!(keys, ["id", "components", "patterns", "extract", "extract"]);
    }

    #[test]
    fn patterns_with_control_characters_are_refused() {
        let cases = [
            ("newline", "line one\nline two", Some(r"'\n'")),
            ("carriage return", "carriage\rreturn", Some(r"'\r'")),
            ("nul", "nul\0byte", Some(r"'\0'")),
            ("escape", "esc\u{1b}[0m", Some(r"'\u{1b}'")),
            ("delete", "del\u{7f}", Some(r"'\u{7f}'")),
            ("tab", "col one\tcol two", None),
        ];
        for (name, pattern, refused) in cases {
            let written = toml::Value::String(pattern.into()).to_string();
            let text = GOOD.replace("\"failed to pull image\"]", &format!("\"x\", {written}]"));
            let loaded = parse(&[("demo.toml".to_string(), text)]);
            let Some(shown) = refused else {
                assert!(loaded.is_ok(), "{name}: {:?}", loaded.err());
                continue;
            };
            let errors = loaded.err().unwrap_or_else(|| panic!("{name}: loaded")).0;
            let want = format!(
                "demo.toml: rule demo.one: key patterns: \
                 pattern {pattern:?} holds control character {shown}"
            );
            let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert_eq!(got, [want], "{name}");
        }
    }

    #[test]
    fn unknown_keys_and_syntax_errors_are_refused() {
        let errors = errors_of(&GOOD.replace("severity", "sevrity"));
        assert!(errors[0].message.contains("sevrity"), "{:?}", errors[0]);
        let errors = errors_of("[[rule]\nid=");
        assert_eq!(errors[0].rule, None);
        assert!(errors[0].message.contains("line"), "{:?}", errors[0]);
    }

    #[test]
    fn duplicate_ids_across_files() {
        let sources = [("a.toml".to_string(), GOOD.to_string()), ("b.toml".into(), GOOD.into())];
        let errors = parse(&sources).unwrap_err().0;
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.contains("duplicate id"));
    }

    #[test]
    fn extractors_compile_when_first_needed_and_a_too_large_one_is_refused_then() {
        let too_large = r"(?P<pod>(?:\w{100}){100})";
        let text =
            format!("{GOOD}extract = ['(?P<pod>[a-z]+)', '{too_large}', '(?P<pod>[a-z]+)']\n");
        let rules = parse(&[("a.toml".into(), text)]).unwrap();
        let [good, large, same] = &rules[0].extract[..] else { panic!("three extractors") };
        assert!(Arc::ptr_eq(&good.0, &same.0), "one source, one compiled regex");
        assert!(good.0.regex.get().is_none(), "not compiled at load");
        assert!(good.regex().unwrap().is_match(b"pod"));
        assert!(large.regex().is_none());
        assert!(large.error().unwrap().contains("size limit"), "{:?}", large.error());
        assert_eq!(good.error(), None);
    }

    #[test]
    fn a_duplicate_with_other_problems_is_still_reported() {
        let broken = format!("{GOOD}extract = ['(?P<pod>unclosed']\n");
        let sources = [("a.toml".to_string(), GOOD.to_string()), ("b.toml".into(), broken)];
        let errors = parse(&sources).unwrap_err().0;
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert!(messages.iter().any(|m| m.contains("bad regex")), "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("duplicate id")), "{messages:?}");
    }
}
