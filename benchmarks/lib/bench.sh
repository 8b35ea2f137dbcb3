# Shared by the benchmark scripts: ports, medians, memory, and a static upstream.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# median: the median of the numbers on standard input (space- or line-separated).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# A fixed chat completion, as OpenAI answers it: the body of the static upstream.
BENCH_CHAT_COMPLETION='{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21},"service_tier":"default","system_fingerprint":"fp_06737a9306"}'

# nginx_site WORK NAME PORT UPSTREAM_PORT LOCATION [LISTEN_OPTIONS]: starts nginx (2 workers)
# serving LOCATION on 127.0.0.1:PORT (PORT may be several ports, space-separated: one server
# listening on each; LISTEN_OPTIONS, such as `http2`, go on each listen line), with `llm` as a
# keep-alive upstream at UPSTREAM_PORT. Stop it with kill -QUIT "$(cat WORK/NAME.pid)".
nginx_site() {
    local work="$1" name="$2" port="$3" upstream="$4" location="$5" options="${6:-}"
    mkdir -p "$work/$name"
    cat > "$work/$name.conf" <<CONF
worker_processes 2;
pid $work/$name.pid;
error_log $work/$name/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/$name; proxy_temp_path $work/$name; fastcgi_temp_path $work/$name; uwsgi_temp_path $work/$name; scgi_temp_path $work/$name;
    keepalive_requests 1000000;
    upstream llm { server 127.0.0.1:$upstream; keepalive 64; }
    server {
$(for each in $port; do echo "        listen 127.0.0.1:$each $options;"; done)
        location / { $location }
    }
}
CONF
    nginx -c "$work/$name.conf" -p "$work/$name"
}

# bench_work: a scratch folder in $work, and on exit the processes in $pids and the nginx sites
# stopped and the folder removed. Writes $work/post.lua, the request wrk sends (a chat completion).
bench_work() {
    work="$(mktemp -d)"
    pids=()
    trap bench_cleanup EXIT
    cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench-not-a-real-key"
LUA
}

bench_cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for conf in upstream proxy h2proxy wsproxy; do [ -f "$work/$conf.pid" ] && kill -QUIT "$(cat "$work/$conf.pid")" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# bench_static_upstream_and_proxy UPSTREAM_PORT PROXY_PORT: nginx returning the fixed chat
# completion, and nginx as a keep-alive reverse proxy in front of it.
bench_static_upstream_and_proxy() {
    nginx_site "$work" upstream "$1" "$1" "default_type application/json; return 200 '$BENCH_CHAT_COMPLETION';"
    nginx_site "$work" proxy "$2" "$1" "proxy_pass http://llm; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off;"
}
