#!/usr/bin/env bash
# Policy costs and delays, in one run, release build, on this machine:
#   1. throughput: llmtap-sidecar with no policy against llmtap-sidecar with --require-virtual-key
#      and 10,000 virtual keys loaded, both in front of a static nginx upstream, wrk rotating over
#      1,000 of the keys; rounds alternate the two and the ratio is the median of the rounds' own.
#   2. propagation: the time from DELETE /manage/tokens to the first 401 on each of 1, 10 and 50
#      sidecar processes, every sidecar polled with the key by its own client.
#   3. budget overshoot: a project with a token budget, loaded by 16 connections as fast as the
#      sidecar forwards; what passed after the crossing.
#
#   benchmarks/policy.sh                       # 5 rounds of 10 s
#   ROUNDS=3 DURATION=5 FLEETS="1 10" benchmarks/policy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benchmarks/lib/bench.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}" nginx wrk python3 curl
rounds="${ROUNDS:-5}"
duration="${DURATION:-10}"
fleets="${FLEETS:-1 10 50}"
keys=10000

echo "==> swift build -c release" >&2
for product in llmtap-sidecar llmtap-collector llmtap-collector-bench; do swift build -c release --product "$product" >&2; done
bin="$(swift build -c release --show-bin-path)"

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    [ -f "$work/upstream.pid" ] && kill -QUIT "$(cat "$work/upstream.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

upstream_port=$(free_port); analysis_port=$(free_port); policy_port=$(free_port); http_port=$(free_port); receiver_port=$(free_port)
nginx_site "$work" upstream "$upstream_port" "$upstream_port" "default_type application/json; return 200 '$BENCH_CHAT_COMPLETION';"
token="bench-management-token-$(python3 -c 'import secrets; print(secrets.token_hex(8))')"
MANAGEMENT_TOKEN="$token" "$bin/llmtap-collector" --listen-analysis "tcp://127.0.0.1:$analysis_port" \
    --listen-policy "tcp://127.0.0.1:$policy_port" --http "127.0.0.1:$http_port" --db "$work/llmtap.sqlite" \
    --log-level warning 2> "$work/collector.log" &
pids+=($!)
# Throughput runs publish to a bare receiver, so the collector's work does not take the sidecar's CPU.
"$bin/llmtap-collector-bench" --receive-only "tcp://127.0.0.1:$receiver_port" > "$work/receiver.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$http_port/healthz" && break; sleep 0.1; done

# manage.py: the management calls, over one keep-alive connection.
cat > "$work/manage.py" <<'PY'
import http.client, json, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
conn = http.client.HTTPConnection("127.0.0.1", port)
def call(method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    data = response.read()
    return response.status, (json.loads(data) if data else None)
command = sys.argv[3]
if command == "project":
    status, project = call("POST", "/manage/projects", {"name": sys.argv[4], "credential_ref": "default"})
    print(project["id"])
elif command == "tokens":
    project, count, out = sys.argv[4], int(sys.argv[5]), sys.argv[6]
    start = time.monotonic()
    with open(out, "w") as f:
        for _ in range(count):
            status, answer = call("POST", "/manage/tokens", {"project_id": project, "duration_hours": 24})
            f.write(answer["token"] + "\n")
    print(f"{count / (time.monotonic() - start):.0f}")
elif command == "budget":
    print(call("PUT", f"/manage/projects/{sys.argv[4]}/budget", {"period": "day", "max_tokens": int(sys.argv[5])})[0])
elif command == "usage":
    status, usage = call("GET", f"/manage/usage?project_id={sys.argv[4]}")
    keys = usage["keys_usage"]
    print(usage["spend"]["day"]["tokens"], sum(k["requests"] - k["rejected"] for k in keys), sum(k["rejected"] for k in keys))
PY
manage() { python3 "$work/manage.py" "$http_port" "$token" "$@"; }

echo "==> creating $keys virtual keys" >&2
project=$(manage project bench)
create_rate=$(manage tokens "$project" "$keys" "$work/keys.txt")
sidecar() {  # port, analysis endpoint, extra arguments...
    local port="$1" analysis="$2"
    shift 2
    LLMTAP_CREDENTIAL_DEFAULT=sk-bench-upstream "$bin/llmtap-sidecar" --listen "127.0.0.1:$port" \
        --upstream "http://127.0.0.1:$upstream_port" --collector "$analysis" --log-level warning "$@" 2>> "$work/sidecars.log" &
    pids+=($!)
}
# wait_for PORT KEY STATUS: until a request with KEY gets STATUS (10 s at most).
wait_for() {
    for _ in $(seq 1000); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/v1/chat/completions" -H "Authorization: Bearer $2" -d '{}')" = "$3" ] && return 0
        sleep 0.01
    done
    echo "port $1 never answered $3" >&2
    return 1
}

# 1. Throughput.
plain_port=$(free_port); policy_sidecar_port=$(free_port)
sidecar "$plain_port" "tcp://127.0.0.1:$receiver_port"
plain_pid=${pids[-1]}
sidecar "$policy_sidecar_port" "tcp://127.0.0.1:$receiver_port" --policy "tcp://127.0.0.1:$policy_port" --require-virtual-key
policy_pid=${pids[-1]}
first_key=$(head -1 "$work/keys.txt")
wait_for "$plain_port" "$first_key" 200
wait_for "$policy_sidecar_port" "$first_key" 200
head -1000 "$work/keys.txt" > "$work/wrk-keys.txt"
cat > "$work/keys.lua" <<LUA
local keys = {}
for line in io.lines("$work/wrk-keys.txt") do keys[#keys + 1] = line end
local i = 0
local body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
request = function()
    i = i % #keys + 1
    return wrk.format("POST", "/v1/chat/completions", {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. keys[i]}, body)
end
LUA
declare -A rps
round_ratios=""
for target in plain policy; do
    port=$([ $target = plain ] && echo "$plain_port" || echo "$policy_sidecar_port")
    wrk -t2 -c32 -d2s -s "$work/keys.lua" "http://127.0.0.1:$port" > /dev/null
done
for round in $(seq "$rounds"); do
    for target in plain policy; do
        port=$([ $target = plain ] && echo "$plain_port" || echo "$policy_sidecar_port")
        out="$(wrk -t2 -c32 -d"${duration}s" -s "$work/keys.lua" "http://127.0.0.1:$port")"
        if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "($target) answered errors" >&2; exit 1; fi
        rps[$target]+="$(echo "$out" | awk '/Requests\/sec/ {print $2}') "
        echo "round $round ($target): $(echo "$out" | awk '/Requests\/sec/ {print $2}') req/s" >&2
    done
    round_ratios+="$(awk -v p="$(echo "${rps[policy]}" | awk '{print $NF}')" -v n="$(echo "${rps[plain]}" | awk '{print $NF}')" 'BEGIN { printf "%.3f", p / n }') "
done
policy_rss=$(rss_mb "$policy_pid"); plain_rss=$(rss_mb "$plain_pid")
kill -TERM "$plain_pid" "$policy_pid"; wait "$plain_pid" "$policy_pid" 2>/dev/null || true

# 2. Propagation of a revocation.
cat > "$work/propagation.py" <<'PY'
import http.client, json, sys, threading, time
http_port, token, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ports = [int(p) for p in sys.argv[4:]]
first_401 = {}
gaps = []
stop = threading.Event()
revoked_at = [None]
def poll(port):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    last = None
    while not stop.is_set():
        conn.request("POST", "/v1/chat/completions", body="{}", headers={"Authorization": f"Bearer {key}"})
        response = conn.getresponse()
        response.read()
        now = time.monotonic()
        if last is not None:
            gaps.append(now - last)
        last = now
        if response.status == 401 and revoked_at[0] is not None and port not in first_401:
            first_401[port] = now
        time.sleep(0.002)
threads = [threading.Thread(target=poll, args=(p,), daemon=True) for p in ports]
for t in threads: t.start()
time.sleep(0.5)
conn = http.client.HTTPConnection("127.0.0.1", http_port)
revoked_at[0] = time.monotonic()
conn.request("DELETE", "/manage/tokens", body=json.dumps({"token": key}), headers={"Authorization": f"Bearer {token}"})
assert conn.getresponse().status == 204
deadline = time.monotonic() + 10
while len(first_401) < len(ports) and time.monotonic() < deadline:
    time.sleep(0.01)
stop.set()
delays = sorted((t - revoked_at[0]) * 1000 for t in first_401.values())
gaps.sort()
print(len(ports), len(delays), f"{delays[0]:.1f}", f"{delays[len(delays) // 2]:.1f}", f"{delays[-1]:.1f}", f"{gaps[len(gaps) // 2] * 1000:.1f}")
PY
propagation=""
for fleet in $fleets; do
    fleet_pids=(); fleet_ports=()
    for _ in $(seq "$fleet"); do
        port=$(free_port)
        sidecar "$port" "tcp://127.0.0.1:$receiver_port" --policy "tcp://127.0.0.1:$policy_port" --require-virtual-key --threads 1
        fleet_pids+=(${pids[-1]}); fleet_ports+=("$port")
    done
    key=$(sed -n "$((fleet + 1))p" "$work/keys.txt")
    for port in "${fleet_ports[@]}"; do wait_for "$port" "$key" 200; done
    propagation+="$(python3 "$work/propagation.py" "$http_port" "$token" "$key" "${fleet_ports[@]}")"$'\n'
    kill -TERM "${fleet_pids[@]}"; wait "${fleet_pids[@]}" 2>/dev/null || true
done

# 3. Budget overshoot, through the real collector (it accounts the spend).
budget_project=$(manage project overshoot)
manage tokens "$budget_project" 1 "$work/budget-key.txt" > /dev/null
budget_key=$(cat "$work/budget-key.txt")
limit=3000
manage budget "$budget_project" "$limit" > /dev/null
budget_port=$(free_port)
sidecar "$budget_port" "tcp://127.0.0.1:$analysis_port" --policy "tcp://127.0.0.1:$policy_port" --require-virtual-key
wait_for "$budget_port" "$budget_key" 200
cat > "$work/one-key.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $budget_key"
LUA
budget_out="$(wrk -t2 -c16 -d5s -s "$work/one-key.lua" "http://127.0.0.1:$budget_port")"
sleep 2
read -r spent forwarded rejected < <(manage usage "$budget_project")

echo
echo "$(nproc) cores; $keys virtual keys created through the API at $create_rate keys/s"
echo
echo "1. Sidecar throughput, wrk -t2 -c32 -d${duration}s, $rounds rounds, keys rotating over 1,000 of the $keys"
echo "| sidecar | req/s (median) | RSS after, MB |"
echo "|---|---:|---:|"
echo "| no policy | $(echo "${rps[plain]}" | median) | $plain_rss |"
echo "| --require-virtual-key, $keys keys | $(echo "${rps[policy]}" | median) | $policy_rss |"
ratio=$(echo "$round_ratios" | median)
echo "policy / no policy req/s, median of the rounds' ratios: $ratio (rounds: ${round_ratios% }); lookup cost $(awk -v r="$ratio" 'BEGIN { printf "%.1f", (1 - r) * 100 }')%"
echo
echo "2. DELETE /manage/tokens to the first 401, per sidecar (ms; each sidecar polled every ~2 ms plus a request)"
echo "| sidecars | got it | first | median | last | poll gap median |"
echo "|---:|---:|---:|---:|---:|---:|"
echo -n "$propagation" | awk '{ printf "| %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6 }'
echo
echo "3. Budget overshoot: limit $limit tokens/day, 21 tokens a request, wrk -c16 for 5 s at $(echo "$budget_out" | awk '/Requests\/sec/ {print $2}') req/s"
awk -v s="$spent" -v l="$limit" -v f="$forwarded" -v r="$rejected" 'BEGIN {
    printf "forwarded %d requests (%d tokens), refused %d; past the limit: %d tokens (%.1f%%), %d requests\n", f, s, r, s - l, (s - l) * 100 / l, (s - l) / 21 }'
