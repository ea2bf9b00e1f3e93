//! The Kubernetes objects a tagged message names: node, namespace, pod, container, image,
//! volume, under OpenTelemetry semantic-convention keys.
//!
//! Sources in order of trust: the structured fields of the header (`pod="ns/name"`,
//! `containerID=...`), the rule's own extractors, then patterns every agent prints.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::bytes::Regex;

use super::header::LogHeader;
use super::rules::{Extractor, GROUPS};

/// Attribute key to value; ordered so output is stable.
pub(crate) type Attributes = BTreeMap<&'static str, String>;

/// Structured field names, by the group they fill.
const FIELD_GROUPS: &[(&str, &str)] = &[
    ("podUID", "pod_uid"),
    ("pod_uid", "pod_uid"),
    ("podUid", "pod_uid"),
    ("containerName", "container"),
    ("container_name", "container"),
    ("containerID", "container_id"),
    ("container_id", "container_id"),
    ("containerId", "container_id"),
    ("image", "image"),
    ("imageRef", "image"),
    ("volumeName", "volume"),
    ("volume", "volume"),
    ("pvc", "volume"),
];

const UUID: &str = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";

/// Patterns for the forms agents print in free text. `\\?"` accepts a quote that klog
/// escaped inside a quoted value.
static GENERIC: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    let sources = [
        r#"(?i)image\s*\\?"(?P<image>[^"\\\s]+)\\?""#.to_string(),
        r"(?i)pull access denied for (?P<image>[^,\s]+)".into(),
        r#"(?i)for volume \\?"(?P<volume>[^"\\]+)\\?""#.into(),
        r#"volume\.spec\.Name: \\?"(?P<volume>[^"\\]+)\\?""#.into(),
        r"volumeName:(?P<volume>[^\s}]+)".into(),
        r"(?P<volume>pvc-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})".into(),
        format!(r"(?P<pod>[a-z0-9][a-z0-9.-]*)_(?P<namespace>[a-z0-9][a-z0-9-]*)\((?P<pod_uid>{UUID})\)"),
        r#"(?i)\bpod \\?"(?P<namespace>[a-z0-9][a-z0-9-]*)/(?P<pod>[a-z0-9][a-z0-9.-]*)\\?""#.into(),
        r"PodSandboxMetadata\{Name:(?P<pod>[^,]+),Uid:(?P<pod_uid>[^,]+),Namespace:(?P<namespace>[^,]+)".into(),
        r"pod sandbox: (?P<namespace>[a-z0-9][a-z0-9-]*)/(?P<pod>[a-z0-9][a-z0-9.-]*)/".into(),
        format!(r#"(?i)\(UID: \\?"(?P<pod_uid>{UUID})"#),
        r"(?i)failed container=(?P<container>[a-z0-9][a-z0-9-]*)".into(),
        r#"for \\?"(?P<container>[a-z0-9][a-z0-9-]*)\\?" with [A-Za-z]+(?:BackOff|Error)"#.into(),
        r"ContainerMetadata\{Name:(?P<container>[^,]+)".into(),
        r#"(?i)container(?:_id|ID)?[:=]\s*\\?"?(?:[a-z]+://)?(?P<container_id>[0-9a-f]{64})"#.into(),
        r"(?:containerd|cri-o|docker)://(?P<container_id>[0-9a-f]{64})".into(),
        r"\bid=(?P<container_id>[0-9a-f]{64})\b".into(),
        r"(?i)\bcontainer (?P<container_id>[0-9a-f]{64})\b".into(),
    ];
    sources.iter().map(|s| Regex::new(s).expect("built-in extractor compiles")).collect()
});

/// Fills `attributes` from `message`, keeping what an earlier source already set.
pub(crate) fn extract(
    attributes: &mut Attributes,
    message: &[u8],
    header: Option<&LogHeader>,
    own: &[Extractor],
) {
    if let Some(header) = header {
        from_fields(attributes, header);
    }
    for regex in own.iter().filter_map(Extractor::regex) {
        captures(attributes, regex, message);
    }
    for regex in GENERIC.iter() {
        captures(attributes, regex, message);
    }
}

fn captures(attributes: &mut Attributes, regex: &Regex, message: &[u8]) {
    let Some(caps) = regex.captures(message) else {
        return;
    };
    for name in regex.capture_names().flatten() {
        if let Some(value) = caps.name(name) {
            set(attributes, name, &String::from_utf8_lossy(value.as_bytes()));
        }
    }
}

fn from_fields(attributes: &mut Attributes, header: &LogHeader) {
    // `pod="ns/name"`, and the object of kubelet's own event lines.
    let object = header.get("kind").filter(|kind| *kind == "Pod").and(header.get("object"));
    if let Some((namespace, pod)) = header.get("pod").or(object).and_then(|p| p.split_once('/')) {
        set(attributes, "namespace", namespace);
        set(attributes, "pod", pod);
    }
    for &(field, group) in FIELD_GROUPS {
        if let Some(value) = header.get(field) {
            let value = value.rsplit_once("://").map_or(value, |(_, id)| id);
            set(attributes, group, value);
        }
    }
}

fn set(attributes: &mut Attributes, group: &str, value: &str) {
    let value = value.trim();
    if value.is_empty() {
        return;
    }
    if let Some(&(_, key)) = GROUPS.iter().find(|(g, _)| *g == group) {
        attributes.entry(key).or_insert_with(|| value.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::header;

    fn attributes(message: &str) -> Vec<(&'static str, String)> {
        let header = header::parse(message);
        let mut attributes = Attributes::new();
        extract(&mut attributes, message.as_bytes(), header.as_ref(), &[]);
        attributes.into_iter().collect()
    }

    fn attr(list: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        let mut list: Vec<_> = list.iter().map(|(k, v)| (*k, v.to_string())).collect();
        list.sort();
        list
    }

    #[test]
    fn extraction_table() {
        type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (
                "image of a pull failure",
                r#"Failed to pull image "registry.example.com/app:v1": rpc error"#,
                &[("container.image.name", "registry.example.com/app:v1")],
            ),
            (
                "volume of a mount failure",
                r#"MountVolume.MountDevice failed for volume "pvc-4d70c760-a4b0-11e9-8376-1866da0e836f" : driver"#,
                &[("k8s.volume.name", "pvc-4d70c760-a4b0-11e9-8376-1866da0e836f")],
            ),
            (
                "structured pod and container",
                r#"E0207 02:49:40.739041   24578 x.go:72] "Failed" err="e" pod="default/web-1" podUID="0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b" containerName="app""#,
                &[
                    ("k8s.namespace.name", "default"),
                    ("k8s.pod.name", "web-1"),
                    ("k8s.pod.uid", "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"),
                    ("k8s.container.name", "app"),
                ],
            ),
            (
                "crash loop in the old format",
                r#"Error syncing pod cc89ef7c-bc47-11e7-85ce-901b0edee6b6 ("alpine-368057524-bgt0m_default(cc89ef7c-bc47-11e7-85ce-901b0edee6b6)"), skipping: failed to "StartContainer" for "alpine" with CrashLoopBackOff: "Back-off 5m0s restarting failed container=alpine pod=alpine-368057524-bgt0m_default(cc89ef7c-bc47-11e7-85ce-901b0edee6b6)""#,
                &[
                    ("k8s.namespace.name", "default"),
                    ("k8s.pod.name", "alpine-368057524-bgt0m"),
                    ("k8s.pod.uid", "cc89ef7c-bc47-11e7-85ce-901b0edee6b6"),
                    ("k8s.container.name", "alpine"),
                ],
            ),
            (
                "containerd task id",
                r#"time="2023-09-01T19:12:33Z" level=info msg="TaskOOM event container_id:\"4bcba7fc4369fee4d7d2e6263b58fce52cfc928c6a31cfac4d43c838708991ce\"""#,
                &[(
                    "container.id",
                    "4bcba7fc4369fee4d7d2e6263b58fce52cfc928c6a31cfac4d43c838708991ce",
                )],
            ),
        ];
        let mut names: Vec<&str> = cases.iter().map(|c| c.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len(), "case names are unique");
        for (name, message, want) in cases {
            assert_eq!(attributes(message), attr(want), "{name}");
        }
    }
}
