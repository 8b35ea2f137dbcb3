#!/usr/bin/env bash
# The reverse proxy against its baselines, in one run, release build, on this machine:
#   (a) direct to a static upstream (nginx returning a fixed chat completion),
#   (b) nginx as a keep-alive reverse proxy in front of it,
#   (c) llmtap-sidecar in front of it, publishing every record to a live receiver.
# The receiver is `llmtap-collector-bench --receive-only`: it decodes and sequence-checks every
# record, as the collector's ingest does, but does not parse, price or store. On this 2-core
# machine a full collector would take its CPU from the sidecar being measured; in production it
# runs on its own host (benchmarks/collector.sh measures it).
# wrk drives each with 32 connections; rounds alternate a, b, c so drifting load hits all alike
# (with a baseline d, c and d swap places every other round), and the table reports medians. Then the sidecar's RSS idle and with 1,000 open streams.
#
# This machine's speed drifts by up to 2x within minutes (shared cores), so the ratio reported is
# the median of each round's own c/b: the two runs of a round are seconds apart.
#
#   benchmarks/proxy.sh                 # 5 rounds of 10 s each
#   ROUNDS=5 DURATION=20 benchmarks/proxy.sh
#   BASELINE_BIN=DIR benchmarks/proxy.sh   # also (d): the llmtap-sidecar in DIR (an earlier build),
#                                          # in the same rounds, for an A/B of a change to the data path
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benchmarks/lib/bench.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}" nginx wrk python3
rounds="${ROUNDS:-5}"
duration="${DURATION:-10}"
connections=32

echo "==> swift build -c release" >&2
for product in llmtap-sidecar llmtap-collector-bench llmtap-mock-upstream; do
    swift build -c release --product "$product" >&2
done
bin="$(swift build -c release --show-bin-path)"

bench_work

upstream_port=$(free_port); proxy_port=$(free_port); sidecar_port=$(free_port); analysis_port=$(free_port)
mock_port=$(free_port); streams_sidecar_port=$(free_port); baseline_port=$(free_port)

bench_static_upstream_and_proxy "$upstream_port" "$proxy_port"

"$bin/llmtap-collector-bench" --receive-only "tcp://127.0.0.1:$analysis_port" > "$work/collector.log" 2>&1 &
pids+=($!)
"$bin/llmtap-sidecar" --listen "127.0.0.1:$sidecar_port" --upstream "http://127.0.0.1:$upstream_port" \
    --collector "tcp://127.0.0.1:$analysis_port" --log-level warning 2> "$work/sidecar.log" &
sidecar_pid=$!
pids+=($sidecar_pid)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$sidecar_port/" && break; sleep 0.1; done
idle_rss=$(rss_mb "$sidecar_pid")
targets=(a b c)
if [ -n "${BASELINE_BIN:-}" ]; then
    "$BASELINE_BIN/llmtap-sidecar" --listen "127.0.0.1:$baseline_port" --upstream "http://127.0.0.1:$upstream_port" \
        --collector "tcp://127.0.0.1:$analysis_port" --sidecar-id baseline --log-level warning 2> "$work/baseline.log" &
    pids+=($!)
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$baseline_port/" && break; sleep 0.1; done
    targets+=(d)
fi


declare -A urls=([a]="http://127.0.0.1:$upstream_port/v1/chat/completions"
                 [b]="http://127.0.0.1:$proxy_port/v1/chat/completions"
                 [c]="http://127.0.0.1:$sidecar_port/v1/chat/completions"
                 [d]="http://127.0.0.1:$baseline_port/v1/chat/completions")
declare -A rps p50 p99
round_ratios=""
ab_ratios=""
# wrk prints latencies as 512.00us, 1.20ms or 2.00s: in milliseconds.
to_ms() { awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n += 0; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'; }
for target in "${targets[@]}"; do wrk -t2 -c"$connections" -d2s -s "$work/post.lua" "${urls[$target]}" > /dev/null; done
for round in $(seq "$rounds"); do
    order=("${targets[@]}")
    # With a baseline, every other round runs it before this build (a b d c): whatever drifts
    # within a round then falls on each of the two alike.
    if [ -n "${BASELINE_BIN:-}" ] && [ $((round % 2)) -eq 0 ]; then order=(a b d c); fi
    for target in "${order[@]}"; do
        out="$(wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/post.lua" "${urls[$target]}")"
        if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "($target) answered errors" >&2; exit 1; fi
        rps[$target]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
        p50[$target]+="$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')") "
        p99[$target]+="$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')") "
        echo "round $round ($target): $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s" >&2
    done
    last_b=$(echo "${rps[b]}" | awk '{ print $NF }'); last_c=$(echo "${rps[c]}" | awk '{ print $NF }')
    round_ratios+="$(awk -v c="$last_c" -v b="$last_b" 'BEGIN { printf "%.3f", c / b }') "
    if [ -n "${BASELINE_BIN:-}" ]; then
        last_d=$(echo "${rps[d]}" | awk '{ print $NF }')
        ab_ratios+="$(awk -v c="$last_c" -v d="$last_d" 'BEGIN { printf "%.3f", c / d }') "
    fi
done
loaded_rss=$(rss_mb "$sidecar_pid")

# 1,000 concurrent open streams through a second sidecar, in front of the mock upstream (slow SSE).
"$bin/llmtap-mock-upstream" --listen "127.0.0.1:$mock_port" --event-delay-ms 1000 --events 60 > /dev/null 2>&1 &
pids+=($!)
"$bin/llmtap-sidecar" --listen "127.0.0.1:$streams_sidecar_port" --upstream "http://127.0.0.1:$mock_port" \
    --collector "tcp://127.0.0.1:$analysis_port" --log-level warning 2> "$work/sidecar-streams.log" &
streams_pid=$!
pids+=($streams_pid)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$streams_sidecar_port/v1/models" && break; sleep 0.1; done
streams_idle_rss=$(rss_mb "$streams_pid")
python3 - "$streams_sidecar_port" "$streams_pid" > "$work/streams.out" <<'PY'
import asyncio, sys
port, pid = int(sys.argv[1]), sys.argv[2]
async def stream(ready):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{"stream": true}')
    await writer.drain()
    while b"data: " not in await reader.readline():
        pass
    ready.append(1)
    return writer
async def main():
    ready = []
    writers = await asyncio.gather(*[stream(ready) for _ in range(1000)])
    rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
    print(len(ready), int(rss) / 1024)
    for w in writers:
        w.close()
asyncio.run(main())
PY
read -r open_streams streams_rss < "$work/streams.out"

kill -TERM "$sidecar_pid" "$streams_pid"
wait "$sidecar_pid" "$streams_pid" 2>/dev/null || true
sleep 1
kill -TERM "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
received="$(grep -o 'received=[0-9]*' "$work/collector.log" | tail -1)"
missing="$(grep -o 'missing=[0-9]*' "$work/collector.log" | tail -1)"

a_rps=$(echo "${rps[a]}" | median); b_rps=$(echo "${rps[b]}" | median); c_rps=$(echo "${rps[c]}" | median)
a_p99=$(echo "${p99[a]}" | median); c_p99=$(echo "${p99[c]}" | median)
echo
echo "wrk -t2 -c$connections -d${duration}s, $rounds rounds, medians; $(nproc) cores"
echo
echo "| target | req/s | p50 ms | p99 ms |"
echo "|---|---:|---:|---:|"
for target in "${targets[@]}"; do
    case $target in
        a) name="(a) direct to nginx" ;;
        b) name="(b) nginx keep-alive proxy" ;;
        c) name="(c) llmtap-sidecar + live receiver" ;;
        d) name="(d) baseline llmtap-sidecar ($BASELINE_BIN)" ;;
    esac
    echo "| $name | $(echo "${rps[$target]}" | median) | $(echo "${p50[$target]}" | median) | $(echo "${p99[$target]}" | median) |"
done
echo
awk -v c="$c_rps" -v b="$b_rps" -v a="$a_rps" -v cp="$c_p99" -v ap="$a_p99" 'BEGIN {
    printf "sidecar / nginx proxy req/s: %.2f (of the medians)\n", c / b
    printf "sidecar / direct req/s:      %.2f\n", c / a
    printf "p99 added over direct:       %.3f ms\n", cp - ap }'
echo "sidecar / nginx proxy req/s, median of the rounds' own ratios: $(echo "$round_ratios" | median) (rounds: ${round_ratios% })"
if [ -n "${BASELINE_BIN:-}" ]; then
    d_p99=$(echo "${p99[d]}" | median)
    echo "this build / baseline req/s, median of the rounds' own ratios: $(echo "$ab_ratios" | median) (rounds: ${ab_ratios% }); p99 $c_p99 ms against $d_p99 ms"
fi
echo "sidecar RSS: ${idle_rss} MB idle at start, ${loaded_rss} MB after the load"
echo "streams sidecar RSS: ${streams_idle_rss} MB idle, ${streams_rss} MB with ${open_streams} concurrent open streams"
echo "receiver: ${received:-received=?} ${missing:-} (records from the load)"
