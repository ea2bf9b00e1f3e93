#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine, installing what the tests need:
# systemd-journal-remote (to make real journal files), journalctl, openssl (to make the
# certificates of the TLS tests), the C libraries librdkafka builds against, and tansu, a
# Kafka-protocol broker the Kafka tests start on loopback (installed once with cargo,
# about ten minutes on two cores, then cached in cargo's bin directory); then runs every
# fuzz target for 15 s (cargo-fuzz, installed once the same way).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh openssl

export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v tansu >/dev/null; then
  echo "installing tansu (the tests' Kafka broker)"
  cargo install --quiet --locked tansu --features dynostore
fi

cargo test --locked --all-targets
cargo run --locked --quiet -- rules lint

# Every fuzz target for a bounded time on its seed corpus (cargo-fuzz is installed once),
# from a fixed seed: the same inputs each run. Exploring further is `bash fuzz/run.sh`.
FUZZ_SEED=20261205 bash fuzz/run.sh 15
