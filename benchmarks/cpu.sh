#!/usr/bin/env bash
# Where a request's CPU goes: llmtap-sidecar beside nginx as a keep-alive reverse proxy, both in
# front of the same static upstream (nginx returning a fixed chat completion), release build.
#
#   1. CPU per request, user and kernel, from /proc/PID/stat over DURATION s of wrk -c32 (the
#      sidecar publishing every record to a live receiver, as in benchmarks/proxy.sh).
#   2. User-space instructions per request under valgrind --tool=callgrind: the instructions of
#      WARMUP + REQUESTS requests over one keep-alive connection, less those of a run of WARMUP
#      requests, divided by REQUESTS: start-up (the sidecar's loads the system trust store: about
#      38 M instructions), exit, and the first requests' one-time work (the upstream connection,
#      the runtime's caches) fall out. Instructions do not depend on the machine's noise, so two
#      builds compare exactly.
#
#   benchmarks/cpu.sh
#   BASELINE_BIN=DIR benchmarks/cpu.sh     # also the llmtap-sidecar in DIR (an earlier build)
#   DURATION=8 REQUESTS=2000 benchmarks/cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benchmarks/lib/bench.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}" nginx wrk valgrind gcc binutils python3 curl
duration="${DURATION:-8}"
rounds="${ROUNDS:-3}"
requests="${REQUESTS:-2000}"
warmup="${WARMUP:-200}"

echo "==> swift build -c release" >&2
swift build -c release --product llmtap-sidecar >&2
swift build -c release --product llmtap-collector-bench >&2
bin="$(swift build -c release --show-bin-path)"

bench_work

upstream_port=$(free_port); proxy_port=$(free_port); analysis_port=$(free_port)
bench_static_upstream_and_proxy "$upstream_port" "$proxy_port"
"$bin/llmtap-collector-bench" --receive-only "tcp://127.0.0.1:$analysis_port" > "$work/collector.log" 2>&1 &
pids+=($!)

cat > "$work/client.py" <<'PY'
import http.client, sys
connection = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=600)
body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
for _ in range(int(sys.argv[2])):
    connection.request("POST", "/v1/chat/completions", body=body,
                       headers={"Content-Type": "application/json", "Authorization": "Bearer sk-bench-not-a-real-key"})
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
PY

wait_ready() { for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; return 1; }
clock_ticks=$(getconf CLK_TCK)
# utime and stime of PIDs, summed, in clock ticks.
ticks() { for pid in "$@"; do awk '{ print $14, $15 }' "/proc/$pid/stat"; done | awk '{ u += $1; s += $2 } END { print u, s }'; }

# cpu_sample URL PID...: wrk for DURATION s; prints "req/s user_us kernel_us" per request.
cpu_sample() {
    local url="$1"; shift
    read -r u0 s0 < <(ticks "$@")
    out="$(wrk -t2 -c32 -d"${duration}s" -s "$work/post.lua" "$url")"
    read -r u1 s1 < <(ticks "$@")
    total=$(echo "$out" | awk '/requests in/ { print $1 }')
    rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
    awk -v n="$total" -v r="$rps" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$clock_ticks" \
        'BEGIN { printf "%.0f %.2f %.2f\n", r, u / hz * 1e6 / n, s / hz * 1e6 / n }'
}

sidecar_args() { echo --listen "127.0.0.1:$1" --upstream "http://127.0.0.1:$upstream_port" --collector "tcp://127.0.0.1:$analysis_port" --log-level warning; }

declare -A builds=([sidecar]="$bin") urls pidsof label
names=(nginx sidecar)
label[nginx]="nginx (proxy)"; label[sidecar]="llmtap-sidecar"
urls[nginx]="http://127.0.0.1:$proxy_port/v1/chat/completions"
pidsof[nginx]="$(pgrep -P "$(cat "$work/proxy.pid")" | tr '\n' ' ')"
if [ -n "${BASELINE_BIN:-}" ]; then builds[baseline]="$BASELINE_BIN"; names+=(baseline); label[baseline]="baseline sidecar"; fi
for name in "${names[@]}"; do
    [ "$name" = nginx ] && continue
    port=$(free_port)
    "${builds[$name]}/llmtap-sidecar" $(sidecar_args "$port") 2> "$work/$name.log" &
    pidsof[$name]=$!
    pids+=($!)
    urls[$name]="http://127.0.0.1:$port/v1/chat/completions"
    wait_ready "$port"
done

echo >&2
echo "==> CPU per request: $rounds rounds of ${duration} s of wrk -c32 each, targets alternating" >&2
for name in "${names[@]}"; do wrk -t2 -c32 -d2s -s "$work/post.lua" "${urls[$name]}" > /dev/null; done
declare -A rps user kernel
ab_ratios=""
for round in $(seq "$rounds"); do
    for name in "${names[@]}"; do
        read -r r u k < <(cpu_sample "${urls[$name]}" ${pidsof[$name]})
        rps[$name]+="$r "; user[$name]+="$u "; kernel[$name]+="$k "
        echo "round $round ($name): $r req/s, $u µs user + $k µs kernel per request" >&2
    done
    if [ -n "${BASELINE_BIN:-}" ]; then
        ab_ratios+="$(echo "${user[sidecar]} | ${kernel[sidecar]} | ${user[baseline]} | ${kernel[baseline]}" | awk -F'|' '{
            n = split($1, a, " "); split($2, b, " "); split($3, c, " "); split($4, d, " ");
            printf "%.3f", (c[n] + d[n]) / (a[n] + b[n]) }') "
    fi
done
rows="$(printf "%-18s %10s %12s %14s\n" "" "req/s" "user µs/req" "kernel µs/req")"$'\n'
for name in "${names[@]}"; do
    rows+="$(printf "%-18s %10s %12s %14s" "${label[$name]}" "$(echo "${rps[$name]}" | median)" \
        "$(echo "${user[$name]}" | median)" "$(echo "${kernel[$name]}" | median)")"$'\n'
done
for name in "${names[@]}"; do [ "$name" = nginx ] || kill -TERM "${pidsof[$name]}"; done

# callgrind_sidecar BUILD COUNT, callgrind_nginx COUNT: the instructions of the server, under
# callgrind, started, serving COUNT requests on one keep-alive connection, and stopped.
instructions() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }
callgrind_sidecar() {
    local build="$1" count="$2" port out
    port=$(free_port)
    out="$work/callgrind.$RANDOM"
    under_valgrind --tool=callgrind --callgrind-out-file="$out" "$(without_debuginfo "$build/llmtap-sidecar")" \
        $(sidecar_args "$port") 2> "$work/valgrind.log" &
    local pid=$!
    wait_ready "$port"
    [ "$count" -gt 0 ] && python3 "$work/client.py" "$port" "$count"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    instructions "$out"
}
callgrind_nginx() {
    local count="$1" port out
    port=$(free_port)
    out="$work/callgrind.$RANDOM"
    mkdir -p "$work/vg"
    cat > "$work/vg.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $work/vg.pid;
error_log $work/vg/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/vg; proxy_temp_path $work/vg; fastcgi_temp_path $work/vg; uwsgi_temp_path $work/vg; scgi_temp_path $work/vg;
    keepalive_requests 1000000;
    upstream llm { server 127.0.0.1:$upstream_port; keepalive 64; }
    server { listen 127.0.0.1:$port; location / { proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } }
}
CONF
    under_valgrind --tool=callgrind --callgrind-out-file="$out" nginx -c "$work/vg.conf" -p "$work/vg" 2> "$work/valgrind-nginx.log" &
    local pid=$!
    wait_ready "$port"
    [ "$count" -gt 0 ] && python3 "$work/client.py" "$port" "$count"
    kill -QUIT "$pid"; wait "$pid" 2>/dev/null || true
    instructions "$out"
}

# Debian's valgrind (3.19) cannot run a Swift server as it is built, for two reasons of its own,
# neither in our code; both are worked around here, for the measurement only:
#  - Swift 6 writes DWARF 5 debug info, which its reader rejects ("unhandled dwarf2 abbrev form
#    code 0x25 ... Possibly corrupted debuginfo file. I can't recover"): the binaries run under it
#    from copies without debug info (function names come from the symbol table, which stays).
#  - An async main parks the main thread in libdispatch's dispatch_main(), which calls
#    sigsuspend() with a mask in read-only memory; valgrind 3.19 edits that mask in place and dies
#    of its own SIGSEGV. A preloaded sigsuspend() copies the mask to the stack first: same syscall,
#    same mask, a few instructions once per signal, none per request.
without_debuginfo() {
    local copy="$work/nodebug.$(echo "$1" | md5sum | cut -c1-8).$(basename "$1")"
    [ -f "$copy" ] || objcopy --strip-debug "$1" "$copy"
    echo "$copy"
}
cat > "$work/sigsuspend.c" <<'C'
#define _GNU_SOURCE
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
int sigsuspend(const sigset_t *mask) {
    sigset_t copy = *mask;
    return (int)syscall(SYS_rt_sigsuspend, &copy, _NSIG / 8);
}
C
gcc -shared -fPIC -O2 -o "$work/sigsuspend.so" "$work/sigsuspend.c"
# It execs, so that `under_valgrind ... &` leaves $! naming valgrind itself, the process to signal.
under_valgrind() { LD_PRELOAD="$work/sigsuspend.so" exec valgrind "$@"; }
if ! (under_valgrind --tool=none "$(without_debuginfo "$bin/llmtap-sidecar")" --help) > /dev/null 2> "$work/valgrind-probe.log"; then
    echo
    echo "CPU per request (wrk -t2 -c32 -d${duration}s, POST /v1/chat/completions, static upstream; medians of $rounds rounds):"
    printf "%s" "$rows"
    echo
    [ -n "$ab_ratios" ] && echo "baseline / this build, CPU per request, median of the rounds' own ratios: $(echo "$ab_ratios" | median) (rounds: $ab_ratios)"
    echo "callgrind: skipped, $(valgrind --version) cannot run llmtap-sidecar here: $(grep -m1 -E 'INTERNAL ERROR|impossible|Giving up|corrupted' "$work/valgrind-probe.log" | sed 's/^[-=0-9]* *//')"
    exit 0
fi
echo "==> user-space instructions per request under callgrind ($requests requests, one connection)" >&2
per_request() { awk -v a="$1" -v b="$2" -v n="$requests" 'BEGIN { printf "%.0f", (b - a) / n }'; }
irows="$(printf "%-18s %14s\n" "" "instr/request")"$'\n'
nginx_per=$(per_request "$(callgrind_nginx "$warmup")" "$(callgrind_nginx $((warmup + requests)))")
irows+="$(printf "%-18s %14s\n" "nginx (proxy)" "$nginx_per")"$'\n'
declare -A per
for name in "${names[@]}"; do
    [ "$name" = nginx ] && continue
    per[$name]=$(per_request "$(callgrind_sidecar "${builds[$name]}" "$warmup")" \
        "$(callgrind_sidecar "${builds[$name]}" $((warmup + requests)))")
    irows+="$(printf "%-18s %14s\n" "${label[$name]}" "${per[$name]}")"$'\n'
done

echo
echo "CPU per request (wrk -t2 -c32 -d${duration}s, POST /v1/chat/completions, static upstream; medians of $rounds rounds):"
printf "%s" "$rows"
[ -n "$ab_ratios" ] && echo "baseline / this build, CPU per request, median of the rounds' own ratios: $(echo "$ab_ratios" | median) (rounds: $ab_ratios)"
echo
echo "User-space instructions per request (valgrind --tool=callgrind, all threads; N=$((warmup + requests)) less N=$warmup):"
printf "%s" "$irows"
awk -v s="${per[sidecar]}" -v n="$nginx_per" 'BEGIN { printf "sidecar / nginx: %.2fx the instructions\n", s / n }'
if [ -n "${BASELINE_BIN:-}" ]; then
    awk -v s="${per[sidecar]}" -v b="${per[baseline]}" 'BEGIN { printf "sidecar / baseline: %.3fx the instructions\n", s / b }'
fi
