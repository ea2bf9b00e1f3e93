//! Which node agent wrote a record, from its unit or program name.
//!
//! Rules name the agents they apply to. Distributions that bundle kubelet and containerd in
//! one process (k3s, rke2, MicroK8s) count as both.

/// The agents a rule can name. A bit set so a record can be several at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agents(u8);

impl Agents {
    pub(crate) const KUBELET: Agents = Agents(1);
    pub(crate) const CONTAINERD: Agents = Agents(2);
    pub(crate) const CRIO: Agents = Agents(4);
    pub(crate) const DOCKER: Agents = Agents(8);
    pub(crate) const KERNEL: Agents = Agents(16);
    /// A unit kubetag does not know: only rules that name no component apply to it.
    pub(crate) const OTHER: Agents = Agents(32);
    pub(crate) const ANY: Agents = Agents(u8::MAX);
    pub(crate) const NONE: Agents = Agents(0);

    pub(crate) const NAMES: [(&'static str, Agents); 5] = [
        ("kubelet", Agents::KUBELET),
        ("containerd", Agents::CONTAINERD),
        ("crio", Agents::CRIO),
        ("docker", Agents::DOCKER),
        ("kernel", Agents::KERNEL),
    ];

    pub(crate) fn from_name(name: &str) -> Option<Agents> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|&(_, a)| a)
    }

    pub(crate) fn union(self, other: Agents) -> Agents {
        Agents(self.0 | other.0)
    }

    pub(crate) fn intersects(self, other: Agents) -> bool {
        self.0 & other.0 != 0
    }
}

/// A record's component: the name reported in the output, and the agents it counts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Component {
    pub(crate) name: String,
    pub(crate) agents: Agents,
}

/// Known unit name fragments, most specific first.
const KNOWN: &[(&str, &str, Agents)] = &[
    ("kubelite", "microk8s", Agents(1 | 2)),
    ("microk8s", "microk8s", Agents(1 | 2)),
    ("k3s", "k3s", Agents(1 | 2)),
    ("rke2", "rke2", Agents(1 | 2)),
    ("cri-docker", "cri-dockerd", Agents(1 | 8)),
    ("kubelet", "kubelet", Agents::KUBELET),
    ("origin-node", "kubelet", Agents::KUBELET),
    ("openshift-node", "kubelet", Agents::KUBELET),
    ("hyperkube", "kubelet", Agents::KUBELET),
    ("containerd", "containerd", Agents::CONTAINERD),
    ("crio", "crio", Agents::CRIO),
    ("cri-o", "crio", Agents::CRIO),
    ("docker", "docker", Agents::DOCKER),
    ("kernel", "kernel", Agents::KERNEL),
];

/// The component of a record from its unit, program or command name. A name kubetag does
/// not know keeps its own spelling and is checked against the rules that name no component;
/// a record that names none at all is checked against every rule.
pub(crate) fn classify(unit: Option<&str>) -> Component {
    let Some(unit) = unit.filter(|u| !u.is_empty()) else {
        return Component { name: "unknown".into(), agents: Agents::ANY };
    };
    let lower = unit.to_ascii_lowercase();
    for &(fragment, name, agents) in KNOWN {
        if lower.contains(fragment) {
            return Component { name: name.into(), agents };
        }
    }
    let stem = lower.strip_suffix(".service").unwrap_or(&lower);
    Component { name: stem.to_string(), agents: Agents::OTHER }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_map_to_components() {
        let cases = [
            ("kubelet.service", "kubelet", Agents::KUBELET),
            ("snap.kubelet.daemon.service", "kubelet", Agents::KUBELET),
            ("origin-node.service", "kubelet", Agents::KUBELET),
            ("containerd.service", "containerd", Agents::CONTAINERD),
            ("cri-containerd.service", "containerd", Agents::CONTAINERD),
            ("crio.service", "crio", Agents::CRIO),
            ("docker.service", "docker", Agents::DOCKER),
            ("dockerd", "docker", Agents::DOCKER),
            ("k3s-agent.service", "k3s", Agents(3)),
            ("rke2-server.service", "rke2", Agents(3)),
            ("snap.microk8s.daemon-kubelite.service", "microk8s", Agents(3)),
            ("kernel", "kernel", Agents::KERNEL),
            ("sshd.service", "sshd", Agents::OTHER),
        ];
        for (unit, name, agents) in cases {
            let c = classify(Some(unit));
            assert_eq!((c.name.as_str(), c.agents), (name, agents), "{unit}");
        }
        assert_eq!(classify(None).agents, Agents::ANY);
    }
}
