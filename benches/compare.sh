#!/usr/bin/env bash
# Times kubetag against the tools a user would otherwise reach for, on one generated corpus,
# alternating the tools round by round so a noisy machine disturbs them alike.
#
#   benches/compare.sh [SIZE_MB] [ERRORS_PER_MILLE] [ROUNDS]     (defaults: 200 30 3)
#   BIG_MB=1024 benches/compare.sh ...   also checks peak RSS on a corpus of that size
#
# Needs ripgrep, grep, jq and GNU time (Debian: ripgrep jq time).
set -euo pipefail
cd "$(dirname "$0")/.."

size_mb=${1:-200}
per_mille=${2:-30}
rounds=${3:-3}
# jq takes minutes per megabyte with a regex this large: it runs on a prefix of the corpus and
# is compared by throughput.
jq_mb=${JQ_MB:-1}

for tool in rg grep jq /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "compare.sh needs $tool" >&2; exit 2; }
done

cargo build --release --locked --quiet --bin kubetag --example corpus
kubetag=target/release/kubetag
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

target/release/examples/corpus "$size_mb" "$per_mille" > "$work/corpus.json"
bytes=$(stat -c %s "$work/corpus.json")
records=$(wc -l < "$work/corpus.json")
"$kubetag" rules patterns > "$work/patterns"
head -c $((jq_mb << 20)) "$work/corpus.json" | sed '$d' > "$work/jq.json"
jq_bytes=$(stat -c %s "$work/jq.json")
# The same literals as one case-insensitive regex, metacharacters escaped.
sed -e 's/[][\\.^$|?*+(){}]/\\&/g' "$work/patterns" | paste -sd'|' > "$work/regex"

# Synthetic rules that double the pattern count: every shipped literal with its words in
# reverse order and a word that never occurs. They start with the words real messages use
# ("image", "failed", "volume"), so the automaton meets them as often as the real ones.
mkdir -p "$work/rules2"
cp rules/*.toml "$work/rules2/"
{
  echo "[[rule]]"
  echo 'id = "synthetic.extra"'
  echo 'category = "config"'
  echo 'severity = "info"'
  echo 'summary = "synthetic patterns for the benchmark"'
  # A JSON array of strings is also a TOML array.
  echo "patterns = $(jq -Rnc '[inputs | split(" ") | reverse | join(" ") + " qzx"]' \
    "$work/patterns")"
} > "$work/rules2/zz_synthetic.toml"
test "$("$kubetag" rules patterns "$work/rules2" | wc -l)" -eq $((2 * $(wc -l < "$work/patterns")))

# Wall seconds of one command (to the millisecond: GNU time's own figure has 10 ms steps,
# a few percent of a run here), peak RSS in KiB to $work/rss. Output goes to a real file:
# GNU grep stops at the first match when it sees its output is /dev/null.
timed() {
  local start end status=0
  start=$(date +%s%N)
  /usr/bin/time -f "%M" -o "$work/time" "$@" > "$work/out" 2>"$work/stderr" || status=$?
  end=$(date +%s%N)
  # grep and rg exit 1 when nothing matched; anything else is a failure.
  if [ "$status" -ne 0 ] && [ "$status" -ne 1 ]; then
    cat "$work/stderr" >&2
    exit 1
  fi
  tail -n 1 "$work/time" > "$work/rss"
  awk -v ns=$((end - start)) 'BEGIN { printf "%.3f", ns / 1e9 }'
}

declare -A best
keep() { # name seconds: keeps the fastest round
  if [ -z "${best[$1]:-}" ] || awk -v a="$2" -v b="${best[$1]}" 'BEGIN { exit !(a < b) }'; then
    best[$1]=$2
  fi
}
peak_rss=0
for round in $(seq 1 "$rounds"); do
  keep kubetag "$(timed "$kubetag" -q < "$work/corpus.json")"
  rss=$(cat "$work/rss"); [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
  keep rg "$(timed rg -F -i -f "$work/patterns" "$work/corpus.json")"
  keep grep "$(timed grep -F -i -f "$work/patterns" "$work/corpus.json")"
  keep kubetag_t1 "$(timed "$kubetag" -q --threads 1 "$work/corpus.json")"
  keep kubetag_t2 "$(timed "$kubetag" -q --threads 2 "$work/corpus.json")"
  keep kubetag_rules2 "$(timed "$kubetag" -q --rules "$work/rules2" < "$work/corpus.json")"
  if [ "$round" -eq 1 ]; then
    keep jq "$(timed jq -c --rawfile re "$work/regex" \
      'select(.MESSAGE | type == "string" and test($re; "i"))' "$work/jq.json")"
  fi
done

mbs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }
rps() { awk -v r="$1" -v s="$2" 'BEGIN { printf "%.0f", r / s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo "corpus: $((bytes >> 20)) MiB, $records records, $per_mille errors per 1000," \
  "$(wc -l < "$work/patterns") patterns; best of $rounds rounds; $(nproc) cores"
printf '%-34s %8s %10s %12s\n' tool seconds MB/s records/s
row() { printf '%-34s %8s %10s %12s\n' "$1" "$2" "$(mbs "$3" "$2")" "$(rps "$4" "$2")"; }
row "kubetag (stdin, default threads)" "${best[kubetag]}" "$bytes" "$records"
row "rg -F -i -f patterns" "${best[rg]}" "$bytes" "$records"
row "grep -F -i -f patterns" "${best[grep]}" "$bytes" "$records"
jq_records=$(wc -l < "$work/jq.json")
row "jq test(regex) [$((jq_bytes >> 10)) KiB prefix]" "${best[jq]}" "$jq_bytes" "$jq_records"
row "kubetag --threads 1 (file)" "${best[kubetag_t1]}" "$bytes" "$records"
row "kubetag --threads 2 (file)" "${best[kubetag_t2]}" "$bytes" "$records"
row "kubetag, rules doubled" "${best[kubetag_rules2]}" "$bytes" "$records"
echo
echo "kubetag/ripgrep wall time:        $(ratio "${best[kubetag]}" "${best[rg]}")  (target <= 1.0)"
jq_speed=$(awk -v b="$jq_bytes" -v s="${best[jq]}" 'BEGIN { print b / s }')
kt_speed=$(awk -v b="$bytes" -v s="${best[kubetag]}" 'BEGIN { print b / s }')
echo "kubetag/jq throughput:            $(ratio "$kt_speed" "$jq_speed")  (target >= 20)"
echo "threads 2 / threads 1 throughput: $(ratio "${best[kubetag_t1]}" "${best[kubetag_t2]}")  (target >= 1.6)"
echo "doubled rules / default:          $(ratio "${best[kubetag]}" "${best[kubetag_rules2]}")  (target >= 0.8)"
echo "kubetag peak RSS:                 $((peak_rss / 1024)) MiB  (target <= 64)"

if [ -n "${BIG_MB:-}" ]; then
  target/release/examples/corpus "$BIG_MB" "$per_mille" > "$work/big.json"
  timed "$kubetag" -q < "$work/big.json" > /dev/null
  echo "kubetag peak RSS on $BIG_MB MiB:      $(( $(cat "$work/rss") / 1024 )) MiB"
  rm -f "$work/big.json"
fi

python3 benches/follow_latency.py "$kubetag"
