//! The DaemonSet manifest and the image build in `deploy/` stay in step with the binary:
//! the arguments are real flags, the configuration loads, the probes and the metrics port
//! agree, and the journal is mounted where the journal source reads it.

mod common;

use clap::Parser as _;
use common::*;
use serde_yaml::Value;

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("deploy/daemonset.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("not a string: {value:?}"))
}

fn container(docs: &[Value]) -> &Value {
    &kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
}

fn args(docs: &[Value]) -> Vec<String> {
    let args = container(docs)["args"].as_sequence().unwrap();
    args.iter().map(|a| text(a).to_string()).collect()
}

/// The value after `flag` in the container's arguments.
fn flag(docs: &[Value], flag: &str) -> String {
    let args = args(docs);
    let at = args.iter().position(|a| a == flag).unwrap_or_else(|| panic!("no {flag}"));
    args[at + 1].clone()
}

#[test]
fn the_arguments_are_the_binarys_own_flags() {
    let docs = manifest();
    let argv = std::iter::once("kubetag".to_string()).chain(args(&docs));
    if let Err(e) = kubetag::cli::Cli::try_parse_from(argv) {
        panic!("the manifest's args do not parse: {e}");
    }
    let image = text(&container(&docs)["image"]);
    assert_eq!(image, format!("kubetag:{}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn the_configuration_checks_and_reads_the_mounted_journal() {
    let docs = manifest();
    let config = text(&kind(&docs, "ConfigMap")["data"]["pipeline.toml"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, config).unwrap();
    let output =
        kubetag_tool().args(["check", "--config", path.to_str().unwrap()]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.ends_with("ok\n"), "{stdout}");

    let loaded = kubetag::config::PipelineConfig::load(Some(&path)).unwrap();
    let settings = kubetag::config::Settings::from_config(loaded).unwrap();
    let [kubetag::source::SourceConfig::Journal(journal)] = &settings.sources[..] else {
        panic!("one journal source: {:?}", settings.sources);
    };
    assert!(journal.follow);
    assert!(settings.dedupe.window_secs > 0);

    // Where the source reads is mounted read-only from the host; where it checkpoints is
    // a writable host directory.
    let mounts = container(&docs)["volumeMounts"].as_sequence().unwrap();
    let mount = |path: &std::path::Path| {
        mounts.iter().find(|m| path.starts_with(text(&m["mountPath"]))).cloned()
    };
    let journal_mount = mount(journal.directory.as_deref().unwrap()).expect("journal mounted");
    assert_eq!(journal_mount["readOnly"], true);
    let state = mount(journal.state_file.as_deref().unwrap()).expect("state dir mounted");
    assert_ne!(state["readOnly"], true);
    let config_mount = mount(std::path::Path::new(&flag(&docs, "--config"))).expect("config");
    assert_eq!(config_mount["readOnly"], true);
    let volumes =
        kind(&docs, "DaemonSet")["spec"]["template"]["spec"]["volumes"].as_sequence().unwrap();
    let volume = |name: &Value| volumes.iter().find(|v| v["name"] == *name).unwrap().clone();
    assert_eq!(volume(&journal_mount["name"])["hostPath"]["path"], "/var/log/journal");
    assert!(volume(&state["name"])["hostPath"].is_mapping(), "the checkpoint outlives the pod");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/etc/machine-id"), "journalctl needs it");
}

#[test]
fn probes_and_scrapes_use_the_metrics_port() {
    let docs = manifest();
    let container = container(&docs);
    let address = flag(&docs, "--metrics");
    let port: u64 = address.rsplit(':').next().unwrap().parse().unwrap();
    let ports = container["ports"].as_sequence().unwrap();
    let named = ports.iter().find(|p| p["name"] == "metrics").expect("a metrics port");
    assert_eq!(named["containerPort"].as_u64(), Some(port));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(get["port"], "metrics", "{probe}");
    }
    let annotations = &kind(&docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string().as_str());
}

#[test]
fn resources_fit_the_measured_footprint() {
    let docs = manifest();
    let resources = &container(&docs)["resources"];
    let mebibytes = |value: &Value| text(value).strip_suffix("Mi").unwrap().parse::<u64>().unwrap();
    // The README's peak RSS is under 30 MiB; journalctl runs beside it in the container.
    let (request, limit) =
        (mebibytes(&resources["requests"]["memory"]), mebibytes(&resources["limits"]["memory"]));
    assert!((32..=64).contains(&request), "{request} Mi");
    assert!(limit >= 2 * request, "{limit} Mi");
    assert!(resources["requests"]["cpu"].is_string() && resources["limits"]["cpu"].is_string());
    let grace = kind(&docs, "DaemonSet")["spec"]["template"]["spec"]
        ["terminationGracePeriodSeconds"]
        .as_u64();
    assert!(grace.unwrap() > 10, "longer than shutdown_timeout_secs");
}

#[test]
fn the_image_is_built_in_two_stages_with_journalctl_at_run_time() {
    let text = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS build"));
    let (build, run) = text.split_at(text.rfind("FROM ").unwrap());
    assert!(build.contains("cargo build --release --locked"));
    assert!(run.contains("COPY --from=build"));
    assert!(run.contains(" systemd "), "journalctl comes with systemd");
    assert!(run.contains("ENTRYPOINT [\"/usr/local/bin/kubetag\"]"));
}
