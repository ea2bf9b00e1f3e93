//! What a sink or a later stage needs to know about one output record without reading it
//! back: its rule and category, its component, and the objects it names.

use std::sync::Arc;

use super::enrich::Attributes;

/// Headers of an input record (a Kafka message's), carried to the record's output.
pub(crate) type Headers = Vec<(String, Option<Vec<u8>>)>;

/// One output record's facts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Route {
    /// The primary rule's index; `None` for an unmatched record passed through.
    pub(crate) rule: Option<u32>,
    /// The primary category's id, or `unmatched`.
    pub(crate) category: &'static str,
    pub(crate) component: String,
    pub(crate) node: Option<String>,
    pub(crate) namespace: Option<String>,
    pub(crate) pod: Option<String>,
    pub(crate) container: Option<String>,
    pub(crate) image: Option<String>,
    pub(crate) volume: Option<String>,
    /// The record's own time, microseconds since the epoch.
    pub(crate) micros: Option<u64>,
    pub(crate) headers: Option<Arc<Headers>>,
}

impl Route {
    pub(crate) fn with_attributes(mut self, attributes: &Attributes) -> Route {
        let get = |key: &str| attributes.get(key).cloned();
        self.node = get("k8s.node.name");
        self.namespace = get("k8s.namespace.name");
        self.pod = get("k8s.pod.name");
        self.container = get("k8s.container.name");
        self.image = get("container.image.name");
        self.volume = get("k8s.volume.name");
        self
    }

    // No sink routes by template yet; the Kafka sink's topic template will.
    /// The value a template placeholder stands for; unknown names are refused when the
    /// template is parsed, so `None` here means the record does not name it.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        match name {
            "category" => Some(self.category),
            "component" => Some(&self.component),
            "node" => self.node.as_deref(),
            "namespace" => self.namespace.as_deref(),
            "pod" => self.pod.as_deref(),
            "container" => self.container.as_deref(),
            "image" => self.image.as_deref(),
            "volume" => self.volume.as_deref(),
            _ => None,
        }
    }

    /// The placeholder names a template may use.
    pub(crate) const FIELDS: [&'static str; 8] =
        ["category", "component", "node", "namespace", "pod", "container", "image", "volume"];
}

/// Where each output record of a batch ends, with its facts.
#[derive(Clone, Debug)]
pub(crate) struct Routed {
    /// The end of the record's line in the batch's bytes, newline included.
    pub(crate) end: usize,
    pub(crate) route: Route,
}
