#!/usr/bin/env bash
# The sidecar as a gateway against the plain sidecar, in one run, release build, on this machine:
#   (p) llmtap-sidecar --upstream, one static upstream (nginx returning a fixed chat completion),
#   (g) llmtap-sidecar --config: three providers weighted 1, 2 and 3, each its own static upstream,
#       routed by Host, two weighted keys on one, client keys checked, health checks every second.
# Both publish every record to a live receiver (llmtap-collector-bench --receive-only). wrk drives
# each with 32 connections; p and g swap places every other round, and the ratio reported is the
# median of the rounds' own g/p (this machine's speed drifts within minutes).
#
#   benchmarks/gateway.sh                  # 5 rounds of 10 s each
#   ROUNDS=7 DURATION=15 benchmarks/gateway.sh
#
# Not measured here yet: failover time and failed requests when an upstream is killed, and
# failed requests and p99 during reload and hot upgrade (issue 14 asks for them).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benchmarks/lib/bench.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}" nginx wrk python3 curl
rounds="${ROUNDS:-5}"
duration="${DURATION:-10}"
connections=32

echo "==> swift build -c release" >&2
for product in llmtap-sidecar llmtap-collector-bench; do swift build -c release --product "$product" >&2; done
bin="$(swift build -c release --show-bin-path)"

bench_work
upstream_port=$(free_port); proxy_port=$(free_port); analysis_port=$(free_port)
plain_port=$(free_port); gateway_port=$(free_port)
bench_static_upstream_and_proxy "$upstream_port" "$proxy_port"
# Two more static upstreams: each provider has its own.
ports=("$upstream_port")
for name in upstream2 upstream3; do
    port=$(free_port)
    nginx_site "$work" "$name" "$port" "$port" "default_type application/json; return 200 '$BENCH_CHAT_COMPLETION';"
    ports+=("$port")
done
stop_sites() { for name in upstream2 upstream3; do [ -f "$work/$name.pid" ] && kill -QUIT "$(cat "$work/$name.pid")" 2>/dev/null || true; done; bench_cleanup; }
trap stop_sites EXIT

"$bin/llmtap-collector-bench" --receive-only "tcp://127.0.0.1:$analysis_port" > "$work/collector.log" 2>&1 &
pids+=($!)
"$bin/llmtap-sidecar" --listen "127.0.0.1:$plain_port" --upstream "http://127.0.0.1:$upstream_port" \
    --collector "tcp://127.0.0.1:$analysis_port" --sidecar-id plain --log-level warning 2> "$work/plain.log" &
pids+=($!)
cat > "$work/gateway.yml" <<YAML
http_port: $gateway_port
http_bind_address: 127.0.0.1
auth_keys: ["sk-bench-not-a-real-key"]
health_check: {enabled: true, interval: 1}
providers:
  - {name: one, type: openai, host: "127.0.0.1:$gateway_port", endpoint: 127.0.0.1, port: ${ports[0]}, tls: false, weight: 1, api_key: sk-provider-1, health_check: {path: /v1/models}}
  - name: two
    type: openai
    host: "127.0.0.1:$gateway_port"
    endpoint: 127.0.0.1
    port: ${ports[1]}
    tls: false
    weight: 2
    api_keys: [{key: sk-provider-2a, weight: 1}, {key: sk-provider-2b, weight: 2}]
    health_check: {path: /v1/models}
  - {name: three, type: openai, host: "127.0.0.1:$gateway_port", endpoint: 127.0.0.1, port: ${ports[2]}, tls: false, weight: 3, api_key: sk-provider-3, health_check: {path: /v1/models}}
llmtap: {collector: "tcp://127.0.0.1:$analysis_port", sidecar_id: gateway, log_level: warning}
YAML
"$bin/llmtap-sidecar" --config "$work/gateway.yml" 2> "$work/gateway.log" &
pids+=($!)
for port in "$plain_port" "$gateway_port"; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done
status=$(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer sk-bench-not-a-real-key' \
    -d '{}' "http://127.0.0.1:$gateway_port/v1/chat/completions")
[ "$status" = 200 ] || { echo "the gateway answered $status" >&2; cat "$work/gateway.log" >&2; exit 1; }

declare -A urls=([p]="http://127.0.0.1:$plain_port/v1/chat/completions" [g]="http://127.0.0.1:$gateway_port/v1/chat/completions")
declare -A rps
ratios=""
for target in p g; do wrk -t2 -c"$connections" -d2s -s "$work/post.lua" "${urls[$target]}" > /dev/null; done
for round in $(seq "$rounds"); do
    order=(p g)
    [ $((round % 2)) -eq 0 ] && order=(g p)
    for target in "${order[@]}"; do
        out="$(wrk -t2 -c"$connections" -d"${duration}s" -s "$work/post.lua" "${urls[$target]}")"
        if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "($target) answered errors" >&2; exit 1; fi
        rps[$target]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
        echo "round $round ($target): $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s" >&2
    done
    last_p=$(echo "${rps[p]}" | awk '{ print $NF }'); last_g=$(echo "${rps[g]}" | awk '{ print $NF }')
    ratios+="$(awk -v g="$last_g" -v p="$last_p" 'BEGIN { printf "%.3f", g / p }') "
done

echo
echo "wrk -t2 -c$connections -d${duration}s, $rounds rounds, medians; $(nproc) cores"
echo
echo "| target | req/s |"
echo "|---|---:|"
echo "| (p) plain sidecar, --upstream | $(echo "${rps[p]}" | median) |"
echo "| (g) gateway: 3 weighted providers, 2 weighted keys, client keys, health checks every 1 s | $(echo "${rps[g]}" | median) |"
echo
echo "gateway / plain req/s, median of the rounds' own ratios: $(echo "$ratios" | median) (rounds: $ratios)"
