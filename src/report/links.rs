//! Probable root causes: pairs of categories where the first, when it starts shortly before
//! the second, is the usual reason for it.
//!
//! One table, checked against the time each category was first seen; adding a link is
//! adding a row.

use crate::tag::category::Category;

/// How soon after the earlier category the later one must start to be linked to it.
pub(crate) const WINDOW_MICROS: u64 = 10 * 60 * 1_000_000;

/// A known causal pair, by category id.
pub(crate) struct Link {
    pub(crate) earlier: &'static str,
    /// Only these rules of `earlier` count, when the category is broader than the cause.
    pub(crate) earlier_rules: &'static [&'static str],
    pub(crate) later: &'static str,
    pub(crate) explanation: &'static str,
}

/// The rules that mean the runtime itself is down, not one container failing in it.
const RUNTIME_DOWN: &[&str] =
    &["container_runtime.socket_unreachable", "container_runtime.runtime_not_ready"];

pub(crate) const LINKS: &[Link] = &[
    Link {
        earlier: "certificate",
        earlier_rules: &[],
        later: "node_registration",
        explanation: "kubelet could not authenticate to the API server with its certificate or \
            kubeconfig, so registering the node and updating its status fail; fix the \
            credentials first",
    },
    Link {
        earlier: "container_runtime",
        earlier_rules: RUNTIME_DOWN,
        later: "pleg",
        explanation: "PLEG relists containers through the runtime; with the runtime down or \
            stuck, relisting times out; bring the runtime back first",
    },
    Link {
        earlier: "container_runtime",
        earlier_rules: RUNTIME_DOWN,
        later: "cni_network",
        explanation: "the runtime loads the CNI configuration and reports network readiness; \
            a runtime that restarted or is down reports the network not ready",
    },
    Link {
        earlier: "container_runtime",
        earlier_rules: RUNTIME_DOWN,
        later: "node_registration",
        explanation: "kubelet marks the node NotReady while the container runtime does not \
            answer",
    },
    Link {
        earlier: "pleg",
        earlier_rules: &[],
        later: "node_registration",
        explanation: "an unhealthy PLEG turns the node NotReady",
    },
    Link {
        earlier: "image_gc",
        earlier_rules: &[],
        later: "eviction",
        explanation: "image garbage collection could not free enough of the image filesystem, \
            so kubelet went on to evict pods under disk pressure",
    },
    Link {
        earlier: "oom",
        earlier_rules: &[],
        later: "crashloop",
        explanation: "containers killed for running out of memory are restarted with back-off; \
            raise their memory limits or find the leak",
    },
    Link {
        earlier: "probe",
        earlier_rules: &[],
        later: "crashloop",
        explanation: "a failing liveness probe makes kubelet restart the container, and \
            repeated restarts back off",
    },
];

/// A link that holds in the records read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Note {
    pub(crate) earlier: Category,
    pub(crate) later: Category,
    pub(crate) earlier_first: u64,
    pub(crate) later_first: u64,
    pub(crate) explanation: &'static str,
}

/// The links whose later category started within the window after the earlier one, in the
/// table's order. `first_seen` gives when a category was first seen, counting only the
/// given rules of it unless there are none; `None` when not seen.
pub(crate) fn notes(first_seen: impl Fn(Category, &[&str]) -> Option<u64>) -> Vec<Note> {
    let mut notes = Vec::new();
    for link in LINKS {
        let (Some(earlier), Some(later)) =
            (Category::from_id(link.earlier), Category::from_id(link.later))
        else {
            continue;
        };
        let earlier_first = first_seen(earlier, link.earlier_rules);
        let (Some(earlier_first), Some(later_first)) = (earlier_first, first_seen(later, &[]))
        else {
            continue;
        };
        let gap = later_first.checked_sub(earlier_first);
        if gap.is_some_and(|gap| gap <= WINDOW_MICROS) {
            notes.push(Note {
                earlier,
                later,
                earlier_first,
                later_first,
                explanation: link.explanation,
            });
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_names_known_categories_and_rules_once() {
        let rules = crate::tag::ruleset::RuleSet::shipped().expect("shipped rules load");
        for (i, link) in LINKS.iter().enumerate() {
            assert!(Category::from_id(link.earlier).is_some(), "{}", link.earlier);
            for id in link.earlier_rules {
                let rule = rules.rules().iter().find(|r| r.id.as_str() == *id);
                let category = rule.map(|r| r.category.id());
                assert_eq!(category, Some(link.earlier), "{id}");
            }
            assert!(Category::from_id(link.later).is_some(), "{}", link.later);
            assert_ne!(link.earlier, link.later);
            let pair = |l: &Link| (l.earlier, l.later);
            assert!(!LINKS[..i].iter().any(|l| pair(l) == pair(link)), "duplicate link");
        }
    }

    const MINUTE: u64 = 60 * 1_000_000;

    #[test]
    fn links_hold_only_in_order_and_within_the_window() {
        type Case<'a> = (&'a str, &'a [(&'a str, u64)], &'a [(&'a str, &'a str)]);
        let cases: &[Case] = &[
            (
                "certificate then registration",
                &[("certificate", 0), ("node_registration", 3 * MINUTE)],
                &[("certificate", "node_registration")],
            ),
            ("registration first", &[("certificate", 3 * MINUTE), ("node_registration", 0)], &[]),
            ("too far apart", &[("certificate", 0), ("node_registration", 11 * MINUTE)], &[]),
            (
                "at the same time",
                &[("image_gc", MINUTE), ("eviction", MINUTE)],
                &[("image_gc", "eviction")],
            ),
            (
                "runtime down before three others",
                &[
                    ("container_runtime", 0),
                    ("pleg", MINUTE),
                    ("cni_network", 2 * MINUTE),
                    ("node_registration", 4 * MINUTE),
                ],
                &[
                    ("container_runtime", "pleg"),
                    ("container_runtime", "cni_network"),
                    ("container_runtime", "node_registration"),
                    ("pleg", "node_registration"),
                ],
            ),
            ("one category alone", &[("pleg", 0)], &[]),
        ];
        for (name, seen, want) in cases {
            let first =
                |c: Category, _: &[&str]| seen.iter().find(|(id, _)| *id == c.id()).map(|s| s.1);
            let got: Vec<_> = notes(first).iter().map(|n| (n.earlier.id(), n.later.id())).collect();
            assert_eq!(got, *want, "{name}");
        }
    }
}
