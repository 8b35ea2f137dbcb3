#!/usr/bin/env bash
# MITM mode against reverse mode and against mitmproxy, release build, one run each in turn:
# the same TLS upstream (nginx returning a fixed chat completion for "localhost", with a
# certificate from a throwaway CA), the same load (hey, 32 connections, keep-alive; through the
# proxies hey CONNECTs and keeps each tunnel open). Then the TLS handshake a MITM client makes with
# the sidecar: for a host seen for the first time (a leaf is minted) and for a cached one.
#
#   benchmarks/mitm.sh                  # 3 rounds of 20,000 requests per target
#   ROUNDS=5 REQUESTS=50000 benchmarks/mitm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/common.sh
source benchmarks/lib/bench.sh

ensure_swift
ensure_packages "${LLMTAP_BUILD_PACKAGES[@]}" nginx hey openssl python3 python3-venv curl
rounds="${ROUNDS:-3}"
requests="${REQUESTS:-20000}"
connections=32

echo "==> swift build -c release" >&2
for product in llmtap-sidecar; do swift build -c release --product "$product" >&2; done
bin="$(swift build -c release --show-bin-path)"
venv=.build/mitmproxy
if [ ! -x "$venv/bin/mitmdump" ]; then
    echo "==> pip install mitmproxy (into $venv)" >&2
    python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check mitmproxy
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    [ -f "$work/nginx.pid" ] && kill -QUIT "$(cat "$work/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
upstream_port=$(free_port); reverse_port=$(free_port); mitm_port=$(free_port); mitmproxy_port=$(free_port)

# A throwaway CA and a certificate for localhost, for the upstream.
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$work/ext.cnf"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=bench CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout "$work/up.key" -out "$work/up.csr" 2>/dev/null
openssl x509 -req -in "$work/up.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial -days 2 \
    -extfile "$work/ext.cnf" -out "$work/up.pem" 2>/dev/null

mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$upstream_port ssl;
        ssl_certificate $work/up.pem;
        ssl_certificate_key $work/up.key;
        location / { default_type application/json; return 200 '$BENCH_CHAT_COMPLETION'; }
    }
}
CONF
nginx -c "$work/nginx.conf" -p "$work/nginx"

"$bin/llmtap-sidecar" --mode both --listen "127.0.0.1:$reverse_port" --mitm-listen "127.0.0.1:$mitm_port" \
    --upstream "https://localhost:$upstream_port" --upstream-ca-file "$work/ca.pem" --ca-dir "$work/llmtap-ca" \
    --allowlist "localhost,*.bench.test" --mitm-ports "443,$upstream_port" --collector "tcp://127.0.0.1:$(free_port)" \
    --log-level warning 2> "$work/sidecar.log" &
pids+=($!)
HOME="$work" "$venv/bin/mitmdump" -q --listen-host 127.0.0.1 --listen-port "$mitmproxy_port" \
    --set ssl_verify_upstream_trusted_ca="$work/ca.pem" --set connection_strategy=lazy > "$work/mitmproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -f "$work/llmtap-ca/llmtap-ca.pem" ] && [ -f "$work/.mitmproxy/mitmproxy-ca-cert.pem" ] && break; sleep 0.1; done
sleep 1

url="https://localhost:$upstream_port/v1/chat/completions"
printf '%s' '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}' > "$work/request.json"
run() {  # target: prints req/s and p99 ms
    local out
    case "$1" in
        mitm) out=$(SSL_CERT_FILE="$work/llmtap-ca/llmtap-ca.pem" hey -n "$requests" -c "$connections" -m POST -D "$work/request.json" \
                    -T application/json -x "http://127.0.0.1:$mitm_port" "$url") ;;
        reverse) out=$(hey -n "$requests" -c "$connections" -m POST -D "$work/request.json" -T application/json \
                    "http://127.0.0.1:$reverse_port/v1/chat/completions") ;;
        mitmproxy) out=$(SSL_CERT_FILE="$work/.mitmproxy/mitmproxy-ca-cert.pem" hey -n "$((requests / 10))" -c "$connections" -m POST \
                    -D "$work/request.json" -T application/json -x "http://127.0.0.1:$mitmproxy_port" "$url") ;;
    esac
    if ! echo "$out" | grep -q '\[200\]'; then echo "$out" >&2; echo "($1) answered no 200s" >&2; exit 1; fi
    if echo "$out" | grep -A5 'Status code distribution' | grep -v '\[200\]' | grep -q '\['; then echo "$out" >&2; echo "($1) answered errors" >&2; exit 1; fi
    echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}') $(echo "$out" | awk '$1 == "99%" {printf "%.2f", $3 * 1000}')"
}
declare -A rps p99
for target in mitm reverse mitmproxy; do run "$target" > /dev/null; done  # warm-up
for round in $(seq "$rounds"); do
    for target in mitm reverse mitmproxy; do
        read -r r p <<< "$(run "$target")"
        rps[$target]+="$r "; p99[$target]+="$p "
        echo "round $round ($target): $r req/s, p99 $p ms" >&2
    done
done

# The client's TLS handshake with the sidecar through CONNECT: new hosts (a leaf each) and a cached one.
handshakes=$(python3 - "$mitm_port" "$work/llmtap-ca/llmtap-ca.pem" <<'PY'
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
context = ssl.create_default_context(cafile=ca)
def handshake(host):
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        reply = b""
        while b"\r\n\r\n" not in reply: reply += raw.recv(1024)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        with context.wrap_socket(raw, server_hostname=host):
            pass
    return (time.perf_counter() - start) * 1000
first = sorted(handshake(f"h{i}-{time.time_ns()}.bench.test") for i in range(30))
cached = sorted(handshake("cached.bench.test") for _ in range(31))[1:]
print(f"{first[len(first)//2]:.2f} {cached[len(cached)//2]:.2f}")
PY
)
read -r first_ms cached_ms <<< "$handshakes"

echo
echo "hey -c$connections, keep-alive (tunnels kept open), $rounds rounds, medians; $requests requests per run ($((requests / 10)) through mitmproxy); $(nproc) cores"
echo
echo "| target | req/s | p99 ms |"
echo "|---|---:|---:|"
for target in mitm reverse mitmproxy; do
    echo "| $target | $(echo "${rps[$target]}" | median) | $(echo "${p99[$target]}" | median) |"
done
echo
awk -v m="$(echo "${rps[mitm]}" | median)" -v p="$(echo "${rps[mitmproxy]}" | median)" -v r="$(echo "${rps[reverse]}" | median)" 'BEGIN {
    printf "MITM / mitmproxy req/s: %.1fx\nMITM / reverse req/s:   %.2f\n", m / p, m / r }'
echo "TLS handshake through CONNECT, median: ${first_ms} ms for a host seen for the first time (a leaf minted), ${cached_ms} ms for a cached one"
