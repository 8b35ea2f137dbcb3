#!/usr/bin/env bash
# HTTP/2 from clients, in one run, release build, on this machine: h2load sends chat completions
#   (n) over one h2c connection with 32 streams to nginx as an h2 reverse proxy (`listen ... http2`,
#       HTTP/1.1 keep-alive upstream): the baseline, a proxy doing the same job,
#   (s) over one h2c connection with 32 streams to llmtap-sidecar (prior knowledge),
#   (h) over 32 HTTP/1.1 connections to the same llmtap-sidecar,
# each in front of one static upstream (nginx returning a fixed chat completion, HTTP/1.1), the
# sidecar publishing every record to a live receiver (llmtap-collector-bench --receive-only).
# Rounds alternate n, s, h; req/s and p99 (from h2load's per-request log) are medians over the
# rounds, and the ratio s/n is the median of each round's own (this machine's speed drifts).
#
# Then, unless WEBSOCKET=0, the WebSocket half of the protocols benchmark: benchmarks/websocket.sh
# (messages per second and added latency, 1 KiB messages, through the sidecar against direct).
#
#   benchmarks/h2.sh                       # 5 rounds of 10 s each, then benchmarks/websocket.sh
#   ROUNDS=7 DURATION=15 benchmarks/h2.sh
#   WEBSOCKET=0 benchmarks/h2.sh           # h2 only
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benchmarks/lib/bench.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}" nginx nghttp2-client python3 curl
rounds="${ROUNDS:-5}"
duration="${DURATION:-10}"
streams=32

echo "==> swift build -c release" >&2
for product in llmtap-sidecar llmtap-collector-bench; do swift build -c release --product "$product" >&2; done
bin="$(swift build -c release --show-bin-path)"

bench_work
upstream_port=$(free_port); h2proxy_port=$(free_port); sidecar_port=$(free_port); analysis_port=$(free_port)
nginx_site "$work" upstream "$upstream_port" "$upstream_port" \
    "default_type application/json; return 200 '$BENCH_CHAT_COMPLETION';"
nginx_site "$work" h2proxy "$h2proxy_port" "$upstream_port" \
    "proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off;" http2

"$bin/llmtap-collector-bench" --receive-only "tcp://127.0.0.1:$analysis_port" > "$work/collector.log" 2>&1 &
pids+=($!)
"$bin/llmtap-sidecar" --listen "127.0.0.1:$sidecar_port" --upstream "http://127.0.0.1:$upstream_port" \
    --collector "tcp://127.0.0.1:$analysis_port" --log-level warning 2> "$work/sidecar.log" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$sidecar_port/" && break; sleep 0.1; done
for port in "$h2proxy_port" "$sidecar_port"; do
    status=$(curl -s -o /dev/null -w '%{http_code} %{http_version}' --http2-prior-knowledge \
        -d '{}' "http://127.0.0.1:$port/v1/chat/completions")
    [ "$status" = "200 2" ] || { echo "127.0.0.1:$port does not answer over h2c: $status" >&2; exit 1; }
done

printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}' > "$work/body.json"
declare -A urls=([n]="http://127.0.0.1:$h2proxy_port/v1/chat/completions"
                 [s]="http://127.0.0.1:$sidecar_port/v1/chat/completions"
                 [h]="http://127.0.0.1:$sidecar_port/v1/chat/completions")
declare -A options=([n]="-c1 -m$streams" [s]="-c1 -m$streams" [h]="--h1 -c$streams -m1")
declare -A rps p99
ratios=""
# load TARGET SECONDS: h2load's req/s, then the p99 in ms from its log of every request.
load() {
    local target="$1" seconds="$2" log="$work/requests.log" out
    # shellcheck disable=SC2086
    out="$(h2load ${options[$target]} -t1 -D "$seconds" -d "$work/body.json" -H 'content-type: application/json' \
        -H 'authorization: Bearer sk-bench-not-a-real-key' --log-file="$log" "${urls[$target]}")"
    if ! echo "$out" | grep -qE ' [0-9]+ succeeded, 0 failed, 0 errored'; then
        echo "$out" >&2; echo "($target) had failed requests" >&2; exit 1
    fi
    if ! echo "$out" | grep -qE 'status codes: [0-9]+ 2xx, 0 3xx, 0 4xx, 0 5xx'; then
        echo "$out" >&2; echo "($target) answered errors" >&2; exit 1
    fi
    echo "$(echo "$out" | awk '/^finished in/ { for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) print $(i - 1) + 0 }')" \
        "$(awk '{ print $3 }' "$log" | sort -n | awk '{ v[NR] = $1 } END { printf "%.3f", v[int(NR * 0.99)] / 1000 }')"
}
for target in n s h; do load "$target" 2 > /dev/null; done
for round in $(seq "$rounds"); do
    for target in n s h; do
        read -r r p < <(load "$target" "$duration")
        rps[$target]+="$r "; p99[$target]+="$p "
        echo "round $round ($target): $r req/s, p99 $p ms" >&2
    done
    last_n=$(echo "${rps[n]}" | awk '{ print $NF }'); last_s=$(echo "${rps[s]}" | awk '{ print $NF }')
    ratios+="$(awk -v s="$last_s" -v n="$last_n" 'BEGIN { printf "%.3f", s / n }') "
done
# The sidecar delivers what it queued as it stops; the receiver reports what it got as it stops.
kill -TERM "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
sleep 1
kill -TERM "${pids[0]}"; wait "${pids[0]}" 2>/dev/null || true
received="$(grep -o 'received=[0-9]*' "$work/collector.log" | tail -1 || true)"
missing="$(grep -o 'missing=[0-9]*' "$work/collector.log" | tail -1 || true)"

echo
echo "h2load -t1 -D ${duration}s, $rounds rounds, medians; $(nproc) cores"
echo
echo "| target | req/s | p99 ms |"
echo "|---|---:|---:|"
echo "| (n) nginx, h2c reverse proxy, 1 connection x $streams streams | $(echo "${rps[n]}" | median) | $(echo "${p99[n]}" | median) |"
echo "| (s) llmtap-sidecar, h2c, 1 connection x $streams streams | $(echo "${rps[s]}" | median) | $(echo "${p99[s]}" | median) |"
echo "| (h) llmtap-sidecar, HTTP/1.1, $streams connections | $(echo "${rps[h]}" | median) | $(echo "${p99[h]}" | median) |"
echo
echo "h2 through the sidecar against nginx's h2 (median of rounds): $(echo "$ratios" | median)x (rounds: $ratios)"
echo "h2 against HTTP/1.1 through the sidecar: $(awk -v s="$(echo "${rps[s]}" | median)" -v h="$(echo "${rps[h]}" | median)" 'BEGIN { printf "%.3f", s / h }')x"
echo "records at the receiver: ${received:-?} ${missing:-}"

if [ "${WEBSOCKET:-1}" != 0 ]; then
    echo
    ROUNDS="$rounds" DURATION=5 benchmarks/websocket.sh
fi
