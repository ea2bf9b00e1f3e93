//! The stable categories a record can be tagged with.
//!
//! Ids never change once shipped: dashboards, topics and alerts are keyed on them.

use std::fmt;

/// One category, by its place in [`CATEGORIES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Category(u8);

/// What kubetag knows about a category before any rule is loaded.
pub struct CategoryInfo {
    pub id: &'static str,
    pub title: &'static str,
    pub about: &'static str,
}

macro_rules! categories {
    ($(($id:literal, $title:literal, $about:literal)),* $(,)?) => {
        pub const CATEGORIES: &[CategoryInfo] = &[
            $(CategoryInfo { id: $id, title: $title, about: $about }),*
        ];
    };
}

categories![
    (
        "image_pull",
        "Image pull failures",
        "kubelet or the runtime could not pull an image: missing image or tag, refused \
      credentials, rate limits, registry unreachable."
    ),
    (
        "container_runtime",
        "Container runtime errors",
        "CRI calls from kubelet failing: gRPC errors, shim tasks that do not start, OCI runtime \
      (runc, crun) errors, sandbox creation failures, the runtime itself down."
    ),
    (
        "cgroup",
        "Cgroup errors",
        "cgroup creation or resource allocation failing, cgroup driver mismatches between \
      kubelet and the runtime."
    ),
    (
        "volume_mount",
        "Volume mount failures",
        "attach, mount, unmount or CSI operations on a pod's volumes failing or timing out."
    ),
    (
        "node_registration",
        "Node registration and status",
        "kubelet cannot register its node, find it, or update its status with the API server; \
      the node turns NotReady."
    ),
    (
        "certificate",
        "Certificates and credentials",
        "expired, missing or untrusted certificates, bootstrap kubeconfig problems, TLS \
      handshake failures."
    ),
    (
        "cni_network",
        "Pod network (CNI)",
        "the CNI plugin is missing, not initialised or failing to set up or tear down a pod's \
      network."
    ),
    (
        "pleg",
        "Pod lifecycle event generator",
        "kubelet's PLEG is not healthy: relisting containers from the runtime takes too long."
    ),
    (
        "eviction",
        "Evictions and node pressure",
        "the eviction manager evicts pods or refuses to admit them under memory, disk or PID \
      pressure."
    ),
    ("oom", "Out of memory", "the kernel or a cgroup ran out of memory and killed a process."),
    ("probe", "Probe failures", "liveness, readiness or startup probes failing."),
    ("crashloop", "Crash loops", "containers that keep exiting and are restarted with back-off."),
    ("swap", "Swap", "kubelet refusing to run, or warning, because swap is on."),
    (
        "image_gc",
        "Image garbage collection",
        "the image filesystem is over its threshold and image garbage collection is running \
      or failing."
    ),
    (
        "dns",
        "Pod DNS configuration",
        "the node's resolv.conf exceeds the limits kubelet can pass to pods."
    ),
    (
        "config",
        "kubelet configuration",
        "kubelet refusing to start on bad flags, a missing or invalid configuration file."
    ),
];

impl Category {
    pub fn from_id(id: &str) -> Option<Category> {
        CATEGORIES.iter().position(|c| c.id == id).map(|i| Category(i as u8))
    }

    pub fn id(self) -> &'static str {
        self.info().id
    }

    pub fn info(self) -> &'static CategoryInfo {
        &CATEGORIES[self.0 as usize]
    }

    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }

    pub fn all() -> impl Iterator<Item = Category> {
        (0..CATEGORIES.len()).map(|i| Category(i as u8))
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_round_trip() {
        let mut ids: Vec<&str> = CATEGORIES.iter().map(|c| c.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), CATEGORIES.len());
        for category in Category::all() {
            assert_eq!(Category::from_id(category.id()), Some(category));
        }
    }
}
