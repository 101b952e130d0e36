# Run from the repository root: bash load-tests/h2.sh
#
# HTTP/2 and gRPC through the gateway, side by side with nginx and HAProxy, measured the way
# run.sh measures (lib.sh: each proxy alone on core 0 with one worker; the load driver and the
# backends together on core 1; interleaved rounds, medians, ratios). The driver is h2load
# (Debian's nghttp2-client), one thread, H2_CLIENTS connections with H2_STREAMS streams each,
# in clear text with prior knowledge (h2c):
#   HTTP/2: GET / through each proxy to the same fast nginx HTTP/1.1 backend as run.sh (64-byte
#     answer). The direct row is h2load speaking HTTP/1.1 (--h1) to that backend.
#   gRPC unary: POST /echo.Echo/Unary, one 64-byte message in a 5-byte gRPC frame, through each
#     proxy to a tonic server (load-tests/grpc-echo, built here) that echoes it; the direct row
#     is h2load at that server. gateway: service endpoint h2c://; nginx: grpc_pass; HAProxy:
#     `server ... proto h2`.
# Before measuring, one call per target is checked with curl: HTTP/2 on the client side, the
# expected body and, for gRPC, `grpc-status: 0` in the trailers. h2load counts only HTTP
# statuses, and a failed gRPC call is still HTTP 200, so each round also checks that the
# response bodies received add up to one full answer per request.
#
# Knobs: those of run.sh (ROUNDS, DURATION, PROXY_CORE, LOAD_CORE, QUIET_WAIT, KEEP_WORK,
# SKIP_BUILD, NICE); H2_CLIENTS (16) and H2_STREAMS (10) for h2load -c and -m.
# Prints two Markdown tables on stdout; progress goes to stderr. No test asserts speed.

H2_CLIENTS="${H2_CLIENTS:-16}"
H2_STREAMS="${H2_STREAMS:-10}"
# shellcheck source=load-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ECHO_MANIFEST="$HERE/grpc-echo/Cargo.toml"
ECHO_BIN="${CARGO_TARGET_DIR:-$HERE/grpc-echo/target}/release/grpc-echo"
GRPC_PATH="/echo.Echo/Unary"
TARGETS=(direct gateway nginx haproxy direct-grpc gateway-grpc nginx-grpc haproxy-grpc)
declare -A H2ARGS # target -> h2load arguments besides the common ones, one per line
declare -A EXPECT # target -> bytes of response body per request

# Always built (a no-op when up to date): it is not part of the gateway's tree.
build_echo() {
    log "building the gRPC backend (cargo build --release --manifest-path load-tests/grpc-echo/Cargo.toml)"
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HERE/grpc-echo/target}" \
        cargo build --release --manifest-path "$ECHO_MANIFEST" >&2 || die "grpc-echo does not build"
    [[ -x "$ECHO_BIN" ]] || die "no binary at $ECHO_BIN"
}

# The request body: a gRPC frame (flag 0, 4-byte big-endian length) around an EchoRequest
# whose field 1 is the same 64 bytes the HTTP backend answers. The echo answers the same frame.
write_grpc_request() {
    python3 - "$BODY" >"$WORK/grpc-request.bin" <<'EOF'
import struct, sys
msg = sys.argv[1].encode()
pb = b"\x0a" + bytes([len(msg)]) + msg
sys.stdout.buffer.write(b"\x00" + struct.pack(">I", len(pb)) + pb)
EOF
    GRPC_FRAME_LEN="$(stat -c %s "$WORK/grpc-request.bin")"
}

start_echo() {
    PORT[direct-grpc]="$1"
    # On the load core with the driver and the HTTP backend, like lib.sh's backend.
    start_pinned "$LOAD_CORE" direct-grpc "$ECHO_BIN" "127.0.0.1:${PORT[direct-grpc]}"
    PID[direct-grpc]=$LAST_PID
    HELPERS+=("$LAST_PID")
}

start_nginx_proxy() {
    {
        nginx_common nginx
        echo "http {"
        nginx_http_common nginx
        nginx_upstream backend "${PORT[direct]}"
        nginx_upstream grpc_backend "${PORT[direct-grpc]}"
        cat <<EOF
    # "http2" on a listener without ssl: HTTP/2 with prior knowledge (h2c).
    server {
        listen 127.0.0.1:${PORT[nginx]} http2 backlog=4096;
$(nginx_proxy_location)
    }
    server {
        listen 127.0.0.1:${PORT[nginx-grpc]} http2 backlog=4096;
        location / { grpc_pass grpc://grpc_backend; }
    }
}
EOF
    } >"$WORK/nginx.conf"
    start_nginx nginx "$PROXY_CORE"
    PID[nginx]=$LAST_PID PID[nginx-grpc]=$LAST_PID
}

start_haproxy() {
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096

$(haproxy_defaults)

frontend fe
    bind 127.0.0.1:${PORT[haproxy]} proto h2
    default_backend be

backend be
    server backend 127.0.0.1:${PORT[direct]}

frontend fe_grpc
    bind 127.0.0.1:${PORT[haproxy-grpc]} proto h2
    default_backend be_grpc

backend be_grpc
    server grpc 127.0.0.1:${PORT[direct-grpc]} proto h2
EOF
    start_pinned "$PROXY_CORE" haproxy haproxy -db -f "$WORK/haproxy.cfg"
    PID[haproxy]=$LAST_PID PID[haproxy-grpc]=$LAST_PID
}

# One gateway serves both: h2c is told apart by its preface on the ordinary listener.
start_gateway() {
    local admin_port="$1"
    start_gateway_config <<EOF
$(gateway_base_sections "$admin_port")

[services.grpc]
endpoints = ["h2c://127.0.0.1:${PORT[direct-grpc]}"]

[[routes]]
name = "grpc"
path_prefix = "/echo.Echo/"
service = "grpc"

[[routes]]
name = "all"
path_prefix = "/"
service = "backend"
EOF
    PID[gateway-grpc]=${PID[gateway]}
    PORT[gateway-grpc]=${PORT[gateway]}
}

# URLs, h2load arguments and expected body sizes of every target.
describe_targets() {
    local t grpc_args
    grpc_args="$(printf '%s\n' -d "$WORK/grpc-request.bin" \
        -H 'content-type: application/grpc' -H 'te: trailers')"
    for t in "${TARGETS[@]}"; do
        if [[ "$t" == *-grpc ]]; then
            URL[$t]="http://127.0.0.1:${PORT[$t]}$GRPC_PATH"
            H2ARGS[$t]="$grpc_args"
            EXPECT[$t]=$GRPC_FRAME_LEN
        else
            H2ARGS[$t]=""
            EXPECT[$t]=${#BODY}
        fi
    done
    H2ARGS[direct]="--h1" # the HTTP/1.1 backend itself
}

# Every target answers as it should before anything is measured: over HTTP/2 (except the
# HTTP/1.1 backend), the expected body, and for gRPC a real success (grpc-status 0, which
# comes in the trailers).
check_targets() {
    local t out version
    for t in gateway nginx haproxy; do
        await_body "${PID[$t]}" "$t" "$(target_url "$t")" "$BODY" --http2-prior-knowledge
        version="$(curl -s --max-time 2 --http2-prior-knowledge -o /dev/null -w '%{http_version}' "$(target_url "$t")")"
        [[ "$version" == 2 ]] || die "$t answered over HTTP/$version, not HTTP/2"
    done
    for t in direct-grpc gateway-grpc nginx-grpc haproxy-grpc; do
        for _ in $(seq 100); do
            kill -0 "${PID[$t]}" 2>/dev/null || { tail -n 20 "$WORK/$t.log" >&2; die "$t exited"; }
            curl -s --max-time 1 --http2-prior-knowledge -o /dev/null "http://127.0.0.1:${PORT[$t]}/" && break
            sleep 0.1
        done
        out="$(curl -sS --max-time 2 --http2-prior-knowledge -D - -o "$WORK/$t.reply" \
            -H 'content-type: application/grpc' -H 'te: trailers' \
            --data-binary @"$WORK/grpc-request.bin" "$(target_url "$t")" | tr -d '\r')" ||
            die "the gRPC call through $t failed"
        grep -qE '^HTTP/2 200 ?$' <<<"$out" || die "$t: gRPC call not answered HTTP/2 200: $out"
        grep -qix 'grpc-status: 0' <<<"$out" || die "$t: no grpc-status 0 in the answer: $out"
        cmp -s "$WORK/$t.reply" "$WORK/grpc-request.bin" || die "$t: the gRPC reply is not the echo of the request"
    done
    log "every target answers over HTTP/2; gRPC through each: HTTP 200, grpc-status 0, the message echoed"
}

# h2_round TARGET SECONDS RECORD: one h2load round at a target; see lib.sh's driver_round.
h2_round() {
    local args
    mapfile -t args <<<"${H2ARGS[$1]}"
    [[ -n "${args[0]}" ]] || args=()
    EXPECT_NOW=${EXPECT[$1]}
    rm -f "$WORK/requests.log" # h2load appends to it
    driver_round "$1" "$2" "$3" parse_h2load \
        h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$2" --log-file="$WORK/requests.log" \
        "${args[@]}" "$(target_url "$1")"
}

# h2load's text plus its per-request log → one results line (see driver_round). h2load gives
# no percentiles, so p50 and p99 come from the log. Errors: failed, errored and timed-out
# requests, non-2xx answers, and answers missing from the body bytes received (a gRPC error
# answer is HTTP 200 without a body, and h2load counts it as succeeded).
parse_h2load() {
    local text
    text="$(cat)"
    # Kept with the logs (KEEP_WORK=1) for a look at the per-client figures.
    printf '== %s\n%s\n' "$1" "$text" >>"$WORK/h2load.txt"
    python3 -c '
import re, sys
target, ticks, seconds, other_proxy, other_load, hz, expect, log = sys.argv[1:]
text = sys.stdin.read()
def num(pattern):
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"h2load output without {pattern!r}:\n{text}")
    return float(m.group(1))
rps = num(r"finished in [0-9.]+\w*, ([0-9.]+) req/s")
done = num(r"requests: .*?(\d+) done")
errors = num(r"(\d+) failed") + num(r"(\d+) errored") + num(r"(\d+) timeout")
errors += num(r"status codes: \d+ 2xx, (\d+) 3xx") + num(r"(\d+) 4xx") + num(r"(\d+) 5xx")
data = num(r"traffic: .*, [0-9.]+\w* \((\d+)\) data")
# Against "succeeded", not the 2xx count: a response whose head came in as the time ran out
# counts as 2xx without being done.
errors += max(0, num(r"(\d+) succeeded") - data // int(expect))
lat = sorted(int(line.split("\t")[2]) for line in open(log) if line.strip())
def pct(p):
    return lat[min(len(lat) - 1, int(p * len(lat)))] / 1000 if lat else 0.0
ticks, seconds, hz = int(ticks), int(seconds), int(hz)
cpu = ticks / hz * 1e6 / done if done else 0
print(f"{target} {rps:.0f} {pct(0.50):.3f} {pct(0.99):.3f} {cpu:.1f} {100 * ticks / hz / seconds:.0f} "
      f"{other_proxy} {other_load} {errors:.0f}")
' "$@" "$HZ" "$EXPECT_NOW" "$WORK/requests.log" <<<"$text"
}

# --- report ------------------------------------------------------------------------------

print_table() {
    python3 - "$WORK/results.tsv" "$(cat "$WORK/busy_before")" "$(cat "$WORK/busy_after")" <<'EOF'
import statistics, sys
path, busy_before, busy_after = sys.argv[1:]
rows = {}
others_proxy, others_load = [], []
for line in open(path):
    t, rps, p50, p99, cpu, core, other_proxy, other_load, err = line.split()
    r = rows.setdefault(t, {"rps": [], "p50": [], "p99": [], "cpu": [], "core": [], "err": 0})
    for k, v in (("rps", rps), ("p50", p50), ("p99", p99), ("cpu", cpu), ("core", core)):
        r[k].append(float(v))
    r["err"] += int(err)
    if other_proxy != "-":
        others_proxy.append(float(other_proxy))
    others_load.append(float(other_load))
med = {t: {k: statistics.median(v) for k, v in r.items() if k != "err"} for t, r in rows.items()}
tables = (
    ("HTTP/2 (h2c) from the client, HTTP/1.1 to the backend", "",
     {"direct": "backend (direct, HTTP/1.1)", "gateway": "gateway", "nginx": "nginx", "haproxy": "HAProxy"}),
    ("gRPC unary (h2c both sides)", "-grpc",
     {"direct-grpc": "gRPC server (direct)", "gateway-grpc": "gateway", "nginx-grpc": "nginx", "haproxy-grpc": "HAProxy"}),
)
for title, suffix, names in tables:
    direct, haproxy = med["direct" + suffix], med["haproxy" + suffix]
    print(f"**{title}**")
    print()
    print("| target | req/s | p50 ms | p99 ms | × direct | × HAProxy | p99 × HAProxy | CPU µs/req (core %) | CPU/req × HAProxy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, name in names.items():
        m = med[t]
        print(f"| {name} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rps'] / direct['rps']:.2f} "
              f"| {m['rps'] / haproxy['rps']:.2f} | {m['p99'] / haproxy['p99']:.2f} | {m['cpu']:.1f} ({m['core']:.0f}%) "
              f"| {'–' if t.startswith('direct') else format(m['cpu'] / haproxy['cpu'], '.2f')} |")
    print()
print(f"Medians of {len(rows['direct']['rps'])} interleaved rounds per target. CPU µs/req: user+system time "
      "of the proxy process (nginx: master and worker) per request, and the share of its core it used; "
      "for the direct rows, the backend's (which shares core 1 with h2load). A proxy well below 100% of its core "
      "was not the bottleneck (core 1, with h2load and the backend, was): then CPU/req × HAProxy compares better "
      "than req/s.")
def share(xs):
    return f"median {statistics.median(xs):.0f}%, max {max(xs):.0f}%, {sum(x > 5 for x in xs)} of {len(xs)} rounds above 5%"
print(f"Other work on the machine: {busy_before}% of all cores busy just before the rounds, {busy_after}% just after. "
      f"During the rounds, share of the proxy core used by other work: {share(others_proxy)}; "
      f"of the load core: {share(others_load)} (other work also fills idle time, so these are upper bounds "
      "on what it took from the measurement).")
for t, r in rows.items():
    if r["err"]:
        print(f"Warning: {t}: {r['err']} failed requests, non-2xx answers or answers without a full body across the rounds.")
EOF
}

main() {
    # protoc: tonic-prost-build needs it to build the gRPC backend.
    install_tools h2load:nghttp2-client nginx haproxy curl protoc:protobuf-compiler
    check_prerequisites
    raise_fd_limit
    [[ -x "$GATEWAY" ]] && SKIP_BUILD="${SKIP_BUILD:-1}" # the binary run.sh builds, if it is there
    build_gateway
    build_echo

    local ports
    read -ra ports <<<"$(free_ports 8)"
    PORT[direct]=${ports[0]} PORT[gateway]=${ports[1]} PORT[nginx]=${ports[2]} PORT[haproxy]=${ports[3]}
    PORT[nginx-grpc]=${ports[4]} PORT[haproxy-grpc]=${ports[5]}
    write_grpc_request

    start_backend
    start_echo "${ports[6]}"
    wait_ready direct
    start_gateway "${ports[7]}"
    start_nginx_proxy
    start_haproxy
    describe_targets
    check_targets
    log "ready: backend :${PORT[direct]}, gRPC server :${PORT[direct-grpc]}, gateway :${PORT[gateway]}," \
        "nginx :${PORT[nginx]} :${PORT[nginx-grpc]}, haproxy :${PORT[haproxy]} :${PORT[haproxy-grpc]}"

    wait_quiet
    : >"$WORK/results.tsv"
    load_rounds h2_round
    machine_busy_pct >"$WORK/busy_after"
    print_table
}

main "$@"
