//! A realistic corpus for benchmarks: journald JSON records of about 1 KB with the fields
//! journalctl prints, mostly chatter, with a share of real errors taken from the rules'
//! own examples so every category is represented.

use std::fmt::Write as _;

/// Routine lines kubelet and the runtimes print by the thousand.
const CHATTER: &[&str] = &[
    r#"I1204 09:00:02.300000    2101 reconciler_common.go:258] "operationExecutor.MountVolume started for volume \"kube-api-access-{n}\"" pod="default/web-{n}""#,
    r#"I1204 09:00:02.400000    2101 operation_generator.go:721] "MountVolume.SetUp succeeded for volume \"kube-api-access-{n}\"" pod="default/web-{n}""#,
    r#"I1204 09:00:05.100000    2101 kubelet.go:2435] "SyncLoop (PLEG): event for pod" pod="default/web-{n}" event={"ID":"{n}","Type":"ContainerStarted"}"#,
    r#"time="2026-12-04T09:00:04.100000000Z" level=info msg="StartContainer for \"{n}\" returns successfully""#,
    r#"time="2026-12-04T09:00:02.000000000Z" level=info msg="ImageCreate event name:\"registry.k8s.io/pause:3.9\" labels:{key:\"io.cri-containerd.image\" value:\"managed\"}""#,
    r#"I1204 09:00:03.100000    2101 kubelet_node_status.go:679] "Recording event message for node" node="node-{n}" event="NodeHasSufficientMemory""#,
    r#"I1204 09:00:06.000000    2101 kuberuntime_container.go:709] "Killing container with a grace period" pod="shop/cart-{n}" podUID="3f1c9a52-8d7e-4b1a-9c2e-5a6b7c8d9e0f" containerName="app" gracePeriod=30"#,
    r#"time="2026-12-04 09:00:09.000000000Z" level=info msg="Checking image status: registry.k8s.io/pause:3.9" id=1c20e8a8-635b-445e-8dc3-70acaf7{n} name=/runtime.v1.ImageService/ImageStatus"#,
    r#"I1204 09:00:07.500000    2101 pod_startup_latency_tracker.go:102] "Observed pod startup duration" pod="kube-system/coredns-{n}" podStartSLOduration=2.1"#,
    r#"I1204 09:00:08.000000    2101 scope.go:117] "RemoveContainer" containerID="4bcba7fc4369fee4d7d2e6263b58fce52cfc928c6a31cfac4d43c8387089{n}""#,
];

const UNITS: &[(&str, &str)] = &[
    ("kubelet.service", "kubelet"),
    ("containerd.service", "containerd"),
    ("kubelet.service", "kubelet"),
    ("crio.service", "crio"),
];

/// Deterministic pseudo-random numbers, so runs compare on the same input.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Appends records to `out` until it holds `bytes`; `errors` of every 1000 are errors.
pub fn generate(bytes: usize, errors_per_mille: u64, error_messages: &[String], out: &mut Vec<u8>) {
    let mut rng = Lcg(42);
    let mut seq = 0u64;
    while out.len() < bytes {
        seq += 1;
        let n = rng.next();
        let message = if rng.next() % 1000 < errors_per_mille && !error_messages.is_empty() {
            error_messages[(n as usize) % error_messages.len()].clone()
        } else {
            CHATTER[(n as usize) % CHATTER.len()].replace("{n}", &(n % 100_000).to_string())
        };
        let (unit, comm) = UNITS[(n as usize / 7) % UNITS.len()];
        record(out, seq, unit, comm, &message);
    }
}

fn record(out: &mut Vec<u8>, seq: u64, unit: &str, comm: &str, message: &str) {
    let mut line = String::with_capacity(1100);
    let realtime = 1_796_374_801_000_000 + seq * 1000;
    let _ = write!(
        line,
        r#"{{"__CURSOR":"s=5a9180e1ad81426dbbdd6581c169f29d;i={seq:x};b=6d1a2f0c9e8b4d7a8c5b3e2f1a0d9c8b;m={seq:x};t={realtime:x};x=61ef70d503bdfb34","__REALTIME_TIMESTAMP":"{realtime}","__MONOTONIC_TIMESTAMP":"{mono}","_BOOT_ID":"6d1a2f0c9e8b4d7a8c5b3e2f1a0d9c8b","_MACHINE_ID":"0f1e2d3c4b5a69788796a5b4c3d2e1f0","_HOSTNAME":"node-{host}","_TRANSPORT":"stdout","PRIORITY":"6","SYSLOG_FACILITY":"3","SYSLOG_IDENTIFIER":"{comm}","_PID":"2101","_UID":"0","_GID":"0","_COMM":"{comm}","_EXE":"/usr/bin/{comm}","_CMDLINE":"/usr/bin/{comm} --config=/var/lib/kubelet/config.yaml --kubeconfig=/etc/kubernetes/kubelet.conf","_CAP_EFFECTIVE":"1ffffffffff","_SYSTEMD_CGROUP":"/system.slice/{unit}","_SYSTEMD_UNIT":"{unit}","_SYSTEMD_SLICE":"system.slice","_SYSTEMD_INVOCATION_ID":"8d5b7c1e2f3a4b5c6d7e8f9a0b1c2d3e","_STREAM_ID":"a1b2c3d4e5f60718293a4b5c6d7e8f90","MESSAGE":"#,
        mono = 1_000_000 + seq,
        host = seq % 7,
    );
    line.push_str(&serde_json::to_string(message).expect("a string serializes"));
    line.push_str("}\n");
    out.extend_from_slice(line.as_bytes());
}
