#!/bin/bash
# CPU 0's time per packet at one fixed rate, for each contender in turn:
# CPU 0 runs the sender *and* the receiving kernel path (veth, XDP, the
# stack), so this is what a contender costs that CPU per packet, measured
# where nothing is saturated. An experiment for scenario 2, not part of
# `cargo xtask bench`: it needs perf (Debian: linux-perf) and root.
#
#   bench/cpu0-per-packet.sh [RATE] [PAYLOAD] [ROUNDS] [CONTENDERS...]
#   bench/cpu0-per-packet.sh 400000 64 3 agent tcpdump
#
# Each step sends for 12 s; perf samples CPU 0 (cpu-clock at 3,917 Hz, a
# rate that does not divide the sender's 1 ms bursts) from 4.5 s to 10.5 s,
# when every contender has started. Busy share = samples outside the idle
# loop / all samples; ns per packet = busy share / achieved rate.
set -euo pipefail
rate=${1:-400000}
size=${2:-64}
rounds=${3:-3}
shift $(($# < 3 ? $# : 3))
contenders=("${@:-agent}")
[ $# -eq 0 ] && contenders=(agent tcpdump)
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/target/release/udp-bench
agent=$root/target/release/udp-agent
for bin in "$bench" "$agent"; do
    [ -x "$bin" ] || { echo "missing $bin: run cargo xtask build and cargo build --release -p udp-bench" >&2; exit 1; }
done
command -v perf >/dev/null || { echo "perf is not installed (Debian: apt-get install linux-perf)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for round in $(seq "$rounds"); do
    for c in "${contenders[@]}"; do
        "$bench" rounds --agent "$agent" --contenders "$c" --rate "$rate" --size "$size" \
            --rounds 1 --seconds 12 >"$tmp/log" 2>&1 &
        pid=$!
        sleep 4.5
        perf record -q -e cpu-clock -F 3917 -C 0 -o "$tmp/perf.data" -- sleep 6 2>/dev/null
        wait "$pid" || { cat "$tmp/log" >&2; exit 1; }
        sent=$(grep -o 'sent *[0-9]* pps' "$tmp/log" | grep -o '[0-9]*' | head -1)
        loss=$(grep -o 'loss *[0-9.]*%' "$tmp/log" | grep -o '[0-9.]*' | head -1)
        perf report -i "$tmp/perf.data" --no-children --sort sym -q -n --stdio -g none 2>/dev/null |
            awk -v c="$c" -v r="$round" -v sent="$sent" -v loss="$loss" '
                { all += $2 }
                /pv_native_safe_halt|default_idle|intel_idle|acpi_idle|poll_idle/ { idle += $2 }
                END {
                    busy = (all - idle) / all
                    printf "round %s  %-12s sent %7d pps  loss %s%%  CPU 0 busy %5.1f%%  %5.0f ns/packet\n",
                        r, c, sent, loss, busy * 100, busy * 1e9 / sent
                }'
    done
done
