//! kubetag reads journald JSON records of Kubernetes nodes, tags the kubelet and
//! container-runtime errors among them with one Aho-Corasick automaton built from every
//! rule, enriches each tagged record with what it names and what to do about it, and
//! forwards it to its sinks.
//!
//! Data flows one way: [`source`] -> [`tag`] -> [`sink`], wired by [`pipeline`].
#![forbid(unsafe_code)]

mod ack;
pub mod cli;
pub mod config;
mod dead_letter;
pub(crate) mod dedupe;
#[doc(hidden)]
pub mod fuzz;
mod kafka;
pub mod metrics;
pub mod pipeline;
pub(crate) mod record;
pub(crate) mod report;
pub mod rules_tool;
mod signals;
pub mod sink;
pub mod source;
pub mod stats;
pub mod tag;

pub use record::{Malformed, Shape};
pub use tag::category::{Category, CATEGORIES};
pub use tag::rules::{Rule, RuleError, RuleErrors, RuleId, Severity};
pub use tag::ruleset::RuleSet;
