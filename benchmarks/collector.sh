#!/usr/bin/env bash
# The collector under load, release build, storage on: llmtap-collector-bench publishes synthetic
# OpenAI exchanges (1 Request, 20 StreamChunks of 200-byte SSE events, 1 ResponseDone) from two
# sidecar ids as fast as the collector takes them, plus one probe exchange a second from a third,
# timed from its ResponseDone to its appearance in /metrics. This script watches /metrics for when
# every record has been received and every exchange stored, and reads the collector's peak RSS.
#
#   benchmarks/collector.sh                  # 50,000 exchanges (1.1M records)
#   EXCHANGES=100000 benchmarks/collector.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benchmarks/lib/bench.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}" curl python3
exchanges="${EXCHANGES:-50000}"
chunks=20

echo "==> swift build -c release" >&2
for product in llmtap-collector llmtap-collector-bench; do swift build -c release --product "$product" >&2; done
bin="$(swift build -c release --show-bin-path)"

work="$(mktemp -d)"
collector_pid=""
cleanup() {
    [ -n "$collector_pid" ] && kill -TERM "$collector_pid" 2>/dev/null && wait "$collector_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
analysis_port=$(free_port); http_port=$(free_port)

"$bin/llmtap-collector" --listen-analysis "tcp://127.0.0.1:$analysis_port" --listen-policy "tcp://127.0.0.1:*" --http "127.0.0.1:$http_port" \
    --db "$work/llmtap.sqlite" --log-level warning 2> "$work/collector.log" &
collector_pid=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$http_port/healthz" && break; sleep 0.1; done

metric() {  # the sum of a metric's series (optionally filtered by a label fragment)
    curl -s "http://127.0.0.1:$http_port/metrics" | awk -v name="$1" -v filter="${2:-}" \
        'index($0, name) == 1 && (filter == "" || index($0, filter)) { sum += $NF } END { printf "%d", sum }'
}
now() { date +%s.%N; }

records=$((exchanges * (chunks + 2)))
start=$(now)
"$bin/llmtap-collector-bench" --endpoint "tcp://127.0.0.1:$analysis_port" --http "127.0.0.1:$http_port" \
    --exchanges "$exchanges" --chunks "$chunks" --chunk-bytes 200 > "$work/bench.out" &
bench_pid=$!
received_at="" stored_at=""
while true; do
    received=$(metric llmtap_records_received_total 'sidecar="bench-')
    stored=$(metric llmtap_requests_total 'sidecar="bench-')
    rows=$(metric llmtap_storage_rows_written)
    [ -z "$received_at" ] && [ "$received" -ge "$records" ] && received_at=$(now)
    if [ -z "$stored_at" ] && [ "$stored" -ge "$exchanges" ] && [ "$rows" -ge "$exchanges" ]; then stored_at=$(now); fi
    [ -n "$received_at" ] && [ -n "$stored_at" ] && break
    if ! kill -0 "$collector_pid" 2>/dev/null; then echo "the collector died" >&2; cat "$work/collector.log" >&2; exit 1; fi
    sleep 0.2
done
wait "$bench_pid"
peak_rss=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$collector_pid/status")
lost=$(metric llmtap_records_lost_total)
dropped=$(metric llmtap_records_dropped_by_sidecar_total)

echo
cat "$work/bench.out"
awk -v s="$start" -v r="$received_at" -v t="$stored_at" -v n="$exchanges" -v rec="$records" 'BEGIN {
    printf "records received: %d in %.2f s = %.0f records/s\n", rec, r - s, rec / (r - s)
    printf "exchanges stored: %d in %.2f s = %.0f exchanges/s (SQLite, WAL, batched)\n", n, t - s, n / (t - s) }'
echo "collector peak RSS: ${peak_rss} MB; records lost: ${lost}, dropped by the sidecars: ${dropped}"
echo "$(nproc) cores; storage on; every exchange parsed (SSE), priced and counted"
