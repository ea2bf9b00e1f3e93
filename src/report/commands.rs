//! The next commands to run for a category, filled in with what its records named.
//!
//! One table of templates. A template naming an object (`{pod}`, `{image}`, ...) gives one
//! command per value seen, for the first few; one whose placeholders cannot be filled is
//! left out. Values come from log lines, so each is quoted for the shell.

use std::borrow::Cow;
use std::time::{Duration, UNIX_EPOCH};

use super::aggregate::{CategoryStats, Object};
use crate::tag::category::Category;

/// Commands made from one template at most, so a hundred pods do not bury the rest.
const MAX_PER_TEMPLATE: usize = 3;

/// The journal window opened around a category's first record, on each side.
const WINDOW_MICROS: u64 = 60 * 1_000_000;

/// A command for the categories it names; none means every category.
struct Template {
    categories: &'static [&'static str],
    text: &'static str,
}

const fn t(categories: &'static [&'static str], text: &'static str) -> Template {
    Template { categories, text }
}

const ANY: &[&str] = &[];

const TEMPLATES: &[Template] = &[
    t(ANY, r#"journalctl{units} --since "{since}" --until "{until}""#),
    t(ANY, r#"journalctl {kernel} --since "{since}" --until "{until}""#),
    t(&["image_pull"], "crictl pull {image}"),
    t(&["container_runtime", "pleg", "cni_network"], "crictl info"),
    t(&["container_runtime", "image_gc"], "df -h /var/lib/containerd"),
    t(&["pleg"], "crictl ps -a | wc -l"),
    t(&["cgroup", "eviction", "oom"], "free -h"),
    t(&["cgroup"], "grep -i cgroupDriver /var/lib/kubelet/config.yaml"),
    t(&["volume_mount"], "kubectl get pv {volume}"),
    t(&["node_registration", "eviction"], "kubectl describe node {node}"),
    t(
        &["node_registration", "certificate"],
        "grep -h server: /etc/kubernetes/kubelet.conf /var/lib/kubelet/kubeconfig",
    ),
    t(
        &["certificate"],
        "openssl x509 -noout -subject -enddate -in \
         /var/lib/kubelet/pki/kubelet-client-current.pem",
    ),
    t(&["certificate"], "kubectl get csr"),
    t(&["cni_network"], "ls -l /etc/cni/net.d /opt/cni/bin"),
    t(&["eviction"], "df -h /var/lib/kubelet /var/lib/containerd"),
    t(&["image_gc"], "crictl imagefsinfo"),
    t(&["crashloop"], "kubectl logs {pod} --previous"),
    t(&["swap"], "swapon --show"),
    t(&["dns"], "cat /etc/resolv.conf"),
    t(&["config"], "systemctl cat kubelet"),
    t(&["config"], "kubelet --version"),
    t(ANY, "kubectl describe pod {pod}"),
    t(ANY, "crictl ps -a --name {container}"),
    t(ANY, "crictl inspect {container_id}"),
];

/// Placeholders filled with one value of an object each.
const OBJECT_SLOTS: &[(&str, Object)] = &[
    ("{node}", Object::Node),
    ("{pod}", Object::Pod),
    ("{container}", Object::Container),
    ("{container_id}", Object::ContainerId),
    ("{image}", Object::Image),
    ("{volume}", Object::Volume),
];

/// The commands for `category`, in the table's order, without repeats.
pub(crate) fn next_commands(category: Category, stats: &CategoryStats) -> Vec<String> {
    let mut commands: Vec<String> = Vec::new();
    let applies = |t: &&Template| t.categories.is_empty() || t.categories.contains(&category.id());
    for template in TEMPLATES.iter().filter(applies) {
        for command in fill(template.text, stats) {
            if !commands.contains(&command) {
                commands.push(command);
            }
        }
    }
    commands
}

fn fill(template: &str, stats: &CategoryStats) -> Vec<String> {
    let Some(text) = fill_context(template, stats) else {
        return Vec::new();
    };
    let Some(&(slot, object)) = OBJECT_SLOTS.iter().find(|(slot, _)| text.contains(slot)) else {
        return vec![text];
    };
    stats.objects[object.index()]
        .kept
        .iter()
        .filter_map(|(value, _)| argument(object, value))
        .take(MAX_PER_TEMPLATE)
        .map(|argument| text.replace(slot, &argument))
        .collect()
}

/// Fills the time window and the units; `None` when the records do not give them.
fn fill_context(template: &str, stats: &CategoryStats) -> Option<String> {
    let mut text = template.to_string();
    if text.contains("{since}") {
        let first = stats.first?;
        let since = journal_time(first.saturating_sub(WINDOW_MICROS));
        let until = journal_time(first.saturating_add(WINDOW_MICROS));
        text = text.replace("{since}", &since).replace("{until}", &until);
    }
    let units = &stats.objects[Object::Unit.index()].kept;
    let kernel = units.iter().any(|(unit, _)| unit == "kernel");
    if text.contains("{kernel}") {
        text = text.replace("{kernel}", if kernel { "-k" } else { return None });
    }
    if text.contains("{units}") {
        // `-k` and `-u` together select only kernel records of those units: none.
        let named: Vec<String> = units
            .iter()
            .filter(|(unit, _)| unit != "kernel" && !unit.starts_with('-'))
            .map(|(unit, _)| format!(" -u {}", quote(unit)))
            .collect();
        if named.is_empty() {
            return None;
        }
        text = text.replace("{units}", &named.concat());
    }
    Some(text)
}

/// A value as shell arguments. A value that would read as an option is left out.
fn argument(object: Object, value: &str) -> Option<String> {
    if value.starts_with('-') {
        return None;
    }
    match (object, value.split_once('/')) {
        (Object::Pod, Some((_, pod))) if pod.starts_with('-') => None,
        (Object::Pod, Some((namespace, pod))) => {
            Some(format!("-n {} {}", quote(namespace), quote(pod)))
        }
        _ => Some(quote(value).into_owned()),
    }
}

/// Single-quotes `value` unless it is made only of characters no shell treats specially.
pub(crate) fn quote(value: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:@%+=,^".contains(c);
    if !value.is_empty() && value.chars().all(plain) {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("'{}'", value.replace('\'', r"'\''")))
    }
}

/// The form `journalctl --since` reads, in UTC so the reader's time zone does not matter.
pub(crate) fn journal_time(micros: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_micros(micros);
    let text = humantime::format_rfc3339_seconds(time).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(objects: &[(Object, &[&str])]) -> CategoryStats {
        let mut stats =
            CategoryStats { first: Some(1_796_374_805_000_000), ..CategoryStats::default() };
        for (object, values) in objects {
            for value in *values {
                stats.objects[object.index()].add(value);
            }
        }
        stats
    }

    fn commands(category: &str, stats: &CategoryStats) -> Vec<String> {
        next_commands(Category::from_id(category).expect("known category"), stats)
    }

    #[test]
    fn templates_name_known_categories_and_one_object() {
        for template in TEMPLATES {
            for id in template.categories {
                assert!(Category::from_id(id).is_some(), "{id}");
            }
            let slots = OBJECT_SLOTS.iter().filter(|(slot, _)| template.text.contains(slot));
            assert!(slots.count() <= 1, "{}", template.text);
        }
    }

    #[test]
    fn commands_are_filled_from_the_records() {
        let stats = stats(&[
            (Object::Unit, &["kubelet.service", "containerd.service"]),
            (Object::Pod, &["shop/cart-5f6d", "bare"]),
            (Object::Image, &["myrepo/myapp:v1.0"]),
        ]);
        let got = commands("image_pull", &stats);
        assert_eq!(
            got,
            [
                "journalctl -u kubelet.service -u containerd.service \
                 --since \"2026-12-04 08:59:05 UTC\" --until \"2026-12-04 09:01:05 UTC\"",
                "crictl pull myrepo/myapp:v1.0",
                "kubectl describe pod -n shop cart-5f6d",
                "kubectl describe pod bare",
            ]
        );
    }

    #[test]
    fn kernel_records_get_their_own_window() {
        let got = commands("oom", &stats(&[(Object::Unit, &["kernel"])]));
        assert_eq!(
            got[0],
            "journalctl -k --since \"2026-12-04 08:59:05 UTC\" --until \"2026-12-04 09:01:05 UTC\""
        );
        assert!(!got.iter().any(|c| c.contains(" -u ")), "{got:?}");
    }

    #[test]
    fn no_time_no_window_and_at_most_three_per_template() {
        let mut stats = stats(&[
            (Object::Unit, &["kubelet.service"]),
            (Object::Container, &["a", "b", "c", "d"]),
        ]);
        stats.first = None;
        let got = commands("crashloop", &stats);
        assert_eq!(
            got,
            ["crictl ps -a --name a", "crictl ps -a --name b", "crictl ps -a --name c"]
        );
    }

    #[test]
    fn values_are_quoted_for_the_shell() {
        let cases: &[(&str, &str)] = &[
            ("registry.example.com:5000/app@sha256:ab", "registry.example.com:5000/app@sha256:ab"),
            ("a b", "'a b'"),
            ("x;rm -rf /", "'x;rm -rf /'"),
            ("it's", r"'it'\''s'"),
            ("$(id)", "'$(id)'"),
            ("", "''"),
        ];
        for (value, want) in cases {
            assert_eq!(quote(value), *want, "{value}");
        }
        assert_eq!(argument(Object::Image, "--privileged"), None);
        assert_eq!(argument(Object::Pod, "ns/-x"), None);
    }
}
