#!/usr/bin/env bash
# WebSocket (the Realtime API's transport), in one run, release build, on this machine: Python's
# websockets sends 1 KiB text messages that the mock upstream's /v1/realtime echoes,
#   (d) straight to the mock upstream: the baseline,
#   (s) through llmtap-sidecar (reverse mode, every message tapped and published to a live
#       receiver, llmtap-collector-bench --receive-only),
#   (n) through nginx as a WebSocket proxy (proxy_pass with Upgrade), a proxy doing the same job.
# Throughput: 4 connections, 16 messages in flight on each, echoed messages per second. Latency:
# one connection, one message at a time, the round trip's p50 and p99. Rounds alternate d, s, n;
# figures are medians over the rounds, and the ratio s/d is the median of each round's own.
#
#   benchmarks/websocket.sh                 # 5 rounds of 5 s each, 3000 round trips
#   ROUNDS=3 DURATION=10 benchmarks/websocket.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benchmarks/lib/bench.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}" nginx python3 curl
ensure_python_env
python=.build/python/bin/python
rounds="${ROUNDS:-5}"
duration="${DURATION:-5}"
trips="${TRIPS:-3000}"

echo "==> swift build -c release" >&2
for product in llmtap-sidecar llmtap-mock-upstream llmtap-collector-bench; do
    swift build -c release --product "$product" >&2
done
bin="$(swift build -c release --show-bin-path)"

bench_work
mock_port=$(free_port); sidecar_port=$(free_port); analysis_port=$(free_port); nginx_port=$(free_port)
"$bin/llmtap-mock-upstream" --listen "127.0.0.1:$mock_port" > "$work/mock.log" 2>&1 &
pids+=($!)
"$bin/llmtap-collector-bench" --receive-only "tcp://127.0.0.1:$analysis_port" > "$work/collector.log" 2>&1 &
pids+=($!)
"$bin/llmtap-sidecar" --listen "127.0.0.1:$sidecar_port" --upstream "http://127.0.0.1:$mock_port" \
    --collector "tcp://127.0.0.1:$analysis_port" --log-level warning 2> "$work/sidecar.log" &
pids+=($!)
nginx_site "$work" wsproxy "$nginx_port" "$mock_port" \
    "proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection upgrade; proxy_read_timeout 300s;"
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$sidecar_port/" && break; sleep 0.1; done

declare -A urls=([d]="ws://127.0.0.1:$mock_port/v1/realtime?model=gpt-realtime"
                 [s]="ws://127.0.0.1:$sidecar_port/v1/realtime?model=gpt-realtime"
                 [n]="ws://127.0.0.1:$nginx_port/v1/realtime?model=gpt-realtime")
declare -A mps p50 p99
ratios=""; added=""
for target in d s n; do "$python" benchmarks/lib/ws_load.py throughput "${urls[$target]}" 1 4 16 > /dev/null; done
for round in $(seq "$rounds"); do
    for target in d s n; do
        m=$("$python" benchmarks/lib/ws_load.py throughput "${urls[$target]}" "$duration" 4 16)
        read -r a b < <("$python" benchmarks/lib/ws_load.py latency "${urls[$target]}" "$trips")
        mps[$target]+="$m "; p50[$target]+="$a "; p99[$target]+="$b "
        echo "round $round ($target): $m messages/s, round trip p50 $a us, p99 $b us" >&2
    done
    last() { echo "$1" | awk '{ print $NF }'; }
    ratios+="$(awk -v s="$(last "${mps[s]}")" -v d="$(last "${mps[d]}")" 'BEGIN { printf "%.3f", s / d }') "
    added+="$(awk -v s="$(last "${p50[s]}")" -v d="$(last "${p50[d]}")" 'BEGIN { printf "%.1f", s - d }') "
done
kill -TERM "${pids[2]}"; wait "${pids[2]}" 2>/dev/null || true
sleep 1
kill -TERM "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
received="$(grep -o 'received=[0-9]*' "$work/collector.log" | tail -1 || true)"
missing="$(grep -o 'missing=[0-9]*' "$work/collector.log" | tail -1 || true)"

echo
echo "1 KiB text messages, echoed; $rounds rounds of ${duration}s and $trips round trips, medians; $(nproc) cores"
echo
echo "| target | messages/s (4 connections x 16 in flight) | round trip p50 us | p99 us |"
echo "|---|---:|---:|---:|"
echo "| (d) direct to the mock upstream | $(echo "${mps[d]}" | median) | $(echo "${p50[d]}" | median) | $(echo "${p99[d]}" | median) |"
echo "| (s) through llmtap-sidecar | $(echo "${mps[s]}" | median) | $(echo "${p50[s]}" | median) | $(echo "${p99[s]}" | median) |"
echo "| (n) through nginx (WebSocket proxy) | $(echo "${mps[n]}" | median) | $(echo "${p50[n]}" | median) | $(echo "${p99[n]}" | median) |"
echo
echo "messages/s through the sidecar against direct (median of rounds): $(echo "$ratios" | median)x (rounds: $ratios)"
echo "latency the sidecar adds per round trip, p50 (median of rounds): $(echo "$added" | median) us (rounds: $added)"
echo "records at the receiver: ${received:-?} ${missing:-}"
