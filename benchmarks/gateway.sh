#!/usr/bin/env bash
# The sidecar as a gateway against the plain sidecar, in one run, release build, on this machine:
#   (p) llmtap-sidecar --upstream, one static upstream (nginx returning a fixed chat completion),
#   (g) llmtap-sidecar --config: three providers weighted 1, 2 and 3, each its own upstream address
#       (three ports of the same nginx: the upstream has the same 2 workers as p's), routed by Host, two weighted keys on one, client keys checked, health checks every second.
# Both publish every record to a live receiver (llmtap-collector-bench --receive-only). wrk drives
# each with 32 connections; p and g swap places every other round, and the ratio reported is the
# median of the rounds' own g/p (this machine's speed drifts within minutes).
#
#
# Then, with llmtap-bench (which logs when each request ended, and whether it failed):
#   failover: two providers (llmtap-mock-upstream), health checks every 1 s, load at concurrency
#     16; one provider is SIGKILLed, 5 times (restarted between): how many requests failed, and
#     the time from the kill to the last failed one (0 when none failed), median and max;
#   reload and hot upgrade: the gateway of the req/s rounds under load at concurrency 32, sent
#     SIGHUP (weights changed) and later SIGUSR2: failed requests, and p99 in the 2 s after each
#     signal against p99 outside those windows.
#
#   benchmarks/gateway.sh                  # 5 rounds of 10 s each
#   ROUNDS=7 DURATION=15 benchmarks/gateway.sh
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
for product in llmtap-sidecar llmtap-collector-bench llmtap-bench llmtap-mock-upstream; do swift build -c release --product "$product" >&2; done
bin="$(swift build -c release --show-bin-path)"

bench_work
upstream_port=$(free_port); analysis_port=$(free_port)
plain_port=$(free_port); gateway_port=$(free_port)
# One static upstream on three ports, one for each provider: three nginx servers (6 workers on 2
# cores) would take CPU from the gateway that p's one does not.
ports=("$upstream_port" "$(free_port)" "$(free_port)")
nginx_site "$work" upstream "${ports[*]}" "$upstream_port" "default_type application/json; return 200 '$BENCH_CHAT_COMPLETION';"
stop_sites() {
    # A hot upgrade's process is not in $pids: the PID file names it.
    for file in "$work"/*.pid.sidecar; do [ -f "$file" ] && kill -TERM "$(cat "$file")" 2>/dev/null || true; done
    bench_cleanup
}
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
llmtap: {collector: "tcp://127.0.0.1:$analysis_port", sidecar_id: gateway, log_level: notice}
YAML
"$bin/llmtap-sidecar" --config "$work/gateway.yml" -p "$work/gateway.pid.sidecar" --drain-timeout 5 \
    2> "$work/gateway.log" &
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


# --- Failover: a provider SIGKILLed under load, 5 times.
mock_a=$(free_port); mock_b=$(free_port); failover_port=$(free_port)
start_mock() { "$bin/llmtap-mock-upstream" --listen "127.0.0.1:$1" > "$work/mock-$1.log" 2>&1 & echo $!; }
pid_a=$(start_mock "$mock_a"); pid_b=$(start_mock "$mock_b"); pids+=("$pid_b")
cat > "$work/failover.yml" <<YAML
http_port: $failover_port
http_bind_address: 127.0.0.1
health_check: {enabled: true, interval: 1}
providers:
  - {name: a, type: openai, endpoint: 127.0.0.1, port: $mock_a, tls: false, api_key: sk-a, health_check: {path: /v1/models}}
  - {name: b, type: openai, endpoint: 127.0.0.1, port: $mock_b, tls: false, api_key: sk-b, health_check: {path: /v1/models}}
llmtap: {collector: "tcp://127.0.0.1:$analysis_port", sidecar_id: failover, log_level: notice}
YAML
"$bin/llmtap-sidecar" --config "$work/failover.yml" 2> "$work/failover.log" &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$failover_port/v1/models" && break; sleep 0.1; done
failover_ms=""; failover_failed=""
for kill in 1 2 3 4 5; do
    "$bin/llmtap-bench" --base-url "http://127.0.0.1:$failover_port/v1" --requests 10000000 --duration 5 --concurrency 16 \
        --samples "$work/failover-$kill.csv" > /dev/null 2>&1 &
    bench=$!
    sleep 2
    killed=$(python3 -c 'import time; print(f"{time.time() * 1000:.3f}")')
    kill -KILL "$pid_a"
    wait "$pid_a" 2>/dev/null || true
    wait "$bench" || true
    read -r failed after <<< "$(python3 - "$work/failover-$kill.csv" "$killed" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
killed = float(sys.argv[2])
failed = [float(r["end_unix_ms"]) for r in rows if r["ok"] == "0"]
print(len(failed), f"{max((t - killed for t in failed), default=0):.1f}")
PY
)"
    echo "kill $kill: $failed failed, the last ${after} ms after the kill" >&2
    failover_failed+="$failed "; failover_ms+="$after "
    pid_a=$(start_mock "$mock_a")
    # Back in: its next health check passes.
    for _ in $(seq 50); do
        [ "$(grep -c 'provider=a .*provider back' "$work/failover.log" || true)" -ge "$kill" ] && break
        sleep 0.2
    done
done
pids+=("$pid_a")
max() { tr ' ' '\n' | grep -v '^$' | sort -g | tail -1; }

# --- Reload and hot upgrade under load: SIGHUP at 3 s, SIGUSR2 at 7 s.
"$bin/llmtap-bench" --base-url "http://127.0.0.1:$gateway_port/v1" --token sk-bench-not-a-real-key --requests 100000000 --duration 13 \
    --concurrency 32 --samples "$work/events.csv" > "$work/events.txt" 2>&1 &
bench=$!
sleep 3
hup=$(python3 -c 'import time; print(f"{time.time() * 1000:.3f}")')
sed -i 's/weight: 1, api_key: sk-provider-1/weight: 4, api_key: sk-provider-1/' "$work/gateway.yml"
kill -HUP "$(cat "$work/gateway.pid.sidecar")"
sleep 4
old_pid=$(cat "$work/gateway.pid.sidecar")
usr2=$(python3 -c 'import time; print(f"{time.time() * 1000:.3f}")')
kill -USR2 "$old_pid"
for _ in $(seq 100); do [ "$(cat "$work/gateway.pid.sidecar")" != "$old_pid" ] && break; sleep 0.1; done
new_pid=$(cat "$work/gateway.pid.sidecar")
for _ in $(seq 100); do kill -0 "$old_pid" 2>/dev/null || break; sleep 0.1; done
wait "$bench" || { cat "$work/events.txt" >&2; exit 1; }
[ "$new_pid" != "$old_pid" ] || { echo "the hot upgrade did not happen" >&2; tail -20 "$work/gateway.log" >&2; exit 1; }
kill -0 "$old_pid" 2>/dev/null && { echo "the old process $old_pid is still running" >&2; exit 1; }
events="$(python3 - "$work/events.csv" "$hup" "$usr2" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
hup, usr2 = float(sys.argv[2]), float(sys.argv[3])
def p99(values):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))] if values else float("nan")
def window(start):
    return [r for r in rows if start <= float(r["end_unix_ms"]) < start + 2000]
outside = [float(r["latency_ms"]) for r in rows
           if not (hup <= float(r["end_unix_ms"]) < hup + 2000 or usr2 <= float(r["end_unix_ms"]) < usr2 + 2000)
           and r["ok"] == "1"]
for name, start in (("reload (SIGHUP)", hup), ("hot upgrade (SIGUSR2)", usr2)):
    inside = window(start)
    failed = sum(1 for r in inside if r["ok"] == "0")
    print(f"| {name} | {len(inside)} | {failed} | {p99([float(r['latency_ms']) for r in inside if r['ok'] == '1']):.2f} | {p99(outside):.2f} |")
print(f"total: {len(rows)} requests, {sum(1 for r in rows if r['ok'] == '0')} failed")
PY
)"

echo
echo "wrk -t2 -c$connections -d${duration}s, $rounds rounds, medians; $(nproc) cores"
echo
echo "| target | req/s |"
echo "|---|---:|"
echo "| (p) plain sidecar, --upstream | $(echo "${rps[p]}" | median) |"
echo "| (g) gateway: 3 weighted providers, 2 weighted keys, client keys, health checks every 1 s | $(echo "${rps[g]}" | median) |"
echo
echo "gateway / plain req/s, median of the rounds' own ratios: $(echo "$ratios" | median) (rounds: $ratios)"
echo
echo "failover, a provider SIGKILLed under llmtap-bench load at concurrency 16, 5 kills:"
echo "  failed requests: median $(echo "$failover_failed" | median), max $(echo "$failover_failed" | max) (each: $failover_failed)"
echo "  kill to the last failed request, ms: median $(echo "$failover_ms" | median), max $(echo "$failover_ms" | max)"
echo
echo "reload and hot upgrade under llmtap-bench load at concurrency 32 (windows: the 2 s after each signal):"
echo
echo "| event | requests in the window | failed | p99 ms in it | p99 ms outside |"
echo "|---|---:|---:|---:|---:|"
echo "$events"
