#!/usr/bin/env bash
# The main job on the shipped sample journal: builds kubetag, turns examples/node.export
# into a real journal file and pipes `journalctl -o json` through kubetag.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
remote=/lib/systemd/systemd-journal-remote
[ -x "$remote" ] || remote=/usr/lib/systemd/systemd-journal-remote

cargo build --release --locked --quiet
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$remote" -o "$work/node.journal" - < examples/node.export 2>/dev/null
journalctl --file "$work/node.journal" -o json --no-pager | target/release/kubetag "$@"
