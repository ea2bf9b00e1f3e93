#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian machine, installing what the tests need:
# systemd-journal-remote (to make real journal files), journalctl, and openssl (to make
# the certificates of the TLS tests), then runs every fuzz target for 15 s (cargo-fuzz).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /lib/systemd/systemd-journal-remote ] || [ -x /usr/lib/systemd/systemd-journal-remote ] \
  || need+=(systemd-journal-remote)
command -v journalctl >/dev/null || need+=(systemd)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --locked --all-targets
cargo run --locked --quiet -- rules lint

# Every fuzz target for a bounded time on its seed corpus (cargo-fuzz is installed once).
bash fuzz/run.sh 15
