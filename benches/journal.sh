#!/usr/bin/env bash
# The journal source against `journalctl -o json | kubetag` over the same journal file,
# made with systemd-journal-remote from the benchmark corpus.
#
#   benches/journal.sh [SIZE_MB] [ROUNDS]      (defaults: 100 3)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-100}
rounds=${2:-3}
remote=/lib/systemd/systemd-journal-remote
[ -x "$remote" ] || remote=/usr/lib/systemd/systemd-journal-remote

cargo build --release --locked --quiet --bin kubetag --example corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Corpus records as export-format entries (trusted fields as journald would add them).
target/release/examples/corpus "$size_mb" 30 | python3 -c '
import json, sys
out = sys.stdout.buffer
for line in sys.stdin:
    record = json.loads(line)
    for key in ("__CURSOR",):
        record.pop(key, None)
    for key, value in record.items():
        data = value.encode()
        if b"\n" in data:
            out.write(key.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n")
        else:
            out.write(key.encode() + b"=" + data + b"\n")
    out.write(b"\n")
' > "$work/corpus.export"
"$remote" -o "$work/node.journal" - < "$work/corpus.export" 2>/dev/null
entries=$(journalctl --file "$work/node.journal" -q --no-pager | wc -l)
cat > "$work/journal.toml" <<TOML
[sources.node]
type = "journal"
files = ["$work/node.journal"]
units = []
follow = false
TOML

best_pipe=999999
best_direct=999999
for _ in $(seq 1 "$rounds"); do
  start=$(date +%s.%N)
  journalctl --file "$work/node.journal" -o json --no-pager | target/release/kubetag -q > "$work/pipe.out"
  t=$(echo "$(date +%s.%N) - $start" | bc)
  best_pipe=$(echo "if ($t < $best_pipe) $t else $best_pipe" | bc)
  start=$(date +%s.%N)
  target/release/kubetag -q --config "$work/journal.toml" > "$work/direct.out"
  t=$(echo "$(date +%s.%N) - $start" | bc)
  best_direct=$(echo "if ($t < $best_direct) $t else $best_direct" | bc)
done
[ "$(wc -l < "$work/pipe.out")" = "$(wc -l < "$work/direct.out")" ] || { echo "outputs differ" >&2; exit 1; }
echo "journal: $entries entries, $(($(stat -c %s "$work/corpus.export") >> 20)) MiB exported; best of $rounds"
printf 'journalctl -o json | kubetag   %6.2f s\n' "$best_pipe"
printf 'kubetag --input journal        %6.2f s\n' "$best_direct"
echo "speed-up of the journal source: $(echo "scale=2; $best_pipe / $best_direct" | bc)x"
