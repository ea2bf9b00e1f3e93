#!/usr/bin/env bash
# Kafka to Kafka: kubetag against a plain rdkafka consume-then-produce pass-through
# (examples/kafka_bench.rs, kubetag's client settings, no tagging) on the same broker and
# input topic, alternating round by round. Both read the topic to its end as new group
# members and wait for every delivery; the wall time includes joining the group.
#
#   benches/kafka.sh [SIZE_MB] [ROUNDS] [PARTITIONS]     (defaults: 100 3 2)
#
# Starts tansu on a free loopback port with memory storage (scripts/test.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

size_mb=${1:-100}
rounds=${2:-3}
partitions=${3:-2}
export PATH="$HOME/.cargo/bin:$PATH"
command -v tansu >/dev/null || { echo "kafka.sh needs tansu (see scripts/test.sh)" >&2; exit 2; }

cargo build --release --locked --quiet --bin kubetag --example corpus --example kafka_bench
kubetag=target/release/kubetag
bench=target/release/examples/kafka_bench
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
brokers=127.0.0.1:$port
tansu broker --listener-url "tcp://$brokers" --advertised-listener-url "tcp://$brokers" \
  --storage-engine memory://tansu/ >"$work/tansu.log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$work"' EXIT
until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do sleep 0.1; done
topic() { tansu topic create "$1" --broker "tcp://$brokers" --partitions "$2" >/dev/null; }

target/release/examples/corpus "$size_mb" 30 > "$work/corpus.json"
records=$(wc -l < "$work/corpus.json")
topic journal "$partitions"
"$bench" load "$brokers" journal "$partitions" < "$work/corpus.json"
echo "input: $records records, $size_mb MB, $partitions partitions"

seconds() { /usr/bin/time -f %e -o "$work/t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }; cat "$work/t"; }
best_pass=; best_all=; best_errors=
for round in $(seq "$rounds"); do
  topic "pass-$round" 1; topic "all-$round" 1; topic "errors-$round" 1
  p=$(seconds "$bench" pass "$brokers" journal "pass-$round" "pass-$round")
  a=$(seconds "$kubetag" --quiet --unmatched pass \
    --input "kafka://$brokers/journal?group=all-$round&until_end=true" \
    --output "kafka://$brokers/all-$round")
  e=$(seconds "$kubetag" --quiet \
    --input "kafka://$brokers/journal?group=errors-$round&until_end=true" \
    --output "kafka://$brokers/errors-$round")
  echo "round $round: pass-through ${p}s, kubetag forwarding all ${a}s, kubetag errors only ${e}s"
  best_pass=$(printf '%s\n' $best_pass "$p" | sort -g | head -1)
  best_all=$(printf '%s\n' $best_all "$a" | sort -g | head -1)
  best_errors=$(printf '%s\n' $best_errors "$e" | sort -g | head -1)
done
rate() { echo "$records / $1" | bc; }
echo "best of $rounds (records/s):"
echo "  pass-through           $(rate "$best_pass")"
echo "  kubetag, all forwarded $(rate "$best_all")   ratio $(echo "scale=2; $best_pass / $best_all" | bc)"
echo "  kubetag, errors only   $(rate "$best_errors")   ratio $(echo "scale=2; $best_pass / $best_errors" | bc)"
