#!/usr/bin/env bash
# Soak: a long mixed stream (chatter, errors, secrets, malformed lines) fed as fast as
# kubetag takes it into the release binary, whose HTTP sink is a peer on 127.0.0.1 that
# stalls, answers 503 and drops connections at random (benches/soak.py). Reports RSS over
# time, records in versus out plus dead-lettered, and the worst stalls. Not CI.
# (HTTP, because a 200 acknowledges records: a TCP peer that breaks a connection loses what
# sat in the socket buffers, as the README says, so in and out could not be equal.)
#   bash benches/soak.sh [SECONDS]        default 240
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-240}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --locked --quiet
bin=${CARGO_TARGET_DIR:-target}/release/kubetag

python3 benches/soak.py sink "$work/port" "$work/sink.json" &
sink=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.1; done
port=$(cat "$work/port")

python3 benches/soak.py feed "$seconds" 2>"$work/feed.json" \
  | "$bin" --unmatched pass -q --output "http://127.0.0.1:$port/ingest" \
      --dead-letter "$work/dead.jsonl" --stats-file "$work/stats.json" &
pipeline=$!
sleep 1
kt=$(pgrep -n -P "$$" kubetag || pgrep -n -f "$bin --unmatched pass")

echo "seconds  rss_kib"
started=$(date +%s)
while kill -0 "$kt" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$kt/status" 2>/dev/null || true)
  [ -n "$rss" ] && printf '%7d  %7d\n' $(( $(date +%s) - started )) "$rss"
  sleep 10
done
wait "$pipeline" || echo "kubetag exited with $?"
sleep 3
kill "$sink" 2>/dev/null || true

python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
stats = json.load(open(f"{work}/stats.json"))
sink = json.load(open(f"{work}/sink.json"))
feed = json.load(open(f"{work}/feed.json"))
dead = sum(1 for _ in open(f"{work}/dead.jsonl"))
read, forwarded = stats["records_read"], stats["forwarded"]
print(f"lines read {read}, forwarded {forwarded}, dead-lettered {stats['dead_lettered']} ({dead} in the file), masked {stats['masked']}")
print(f"records fed {feed['fed_records']}, distinct records the sink got {sink['distinct_records']}")
print(f"in == out + dead-lettered: {read} == {sink['distinct_records']} + {stats['dead_lettered']}: {read == sink['distinct_records'] + stats['dead_lettered']}")
print(f"sink: {sink['requests']} requests taken with {sink['lines']} lines (repeats included), {sink['stalls']} stalls, {sink['failed']} answered 503, {sink['dropped']} dropped without an answer")
print(f"worst gap between requests taken by the sink {sink['worst_gap_s']} s, worst blocked write of the feeder {feed['worst_blocked_write_s']} s")
PY
