# Run from the repository root: bash load-tests/run.sh
#
# The gateway side by side with nginx and HAProxy, measured the way ../shared/PERFORMANCE.md
# describes: each proxy alone on core 0 with one worker; wrk (-t1 -c64) and a fast nginx
# backend (64-byte answer) together on core 1. Rounds are interleaved across targets and the
# median of each target is reported, so slow drift of the machine hits every target alike.
# Then memory per idle keep-alive connection: RSS before and after holding IDLE_CONNS open.
#
# Knobs (environment): ROUNDS (5), DURATION seconds per round (2), CONNS for wrk (64),
# IDLE_CONNS (10000), PROXY_CORE (0), LOAD_CORE (1), QUIET_WAIT seconds to wait for other work
# on the machine to stop (60), KEEP_WORK=1 keeps the temp dir and logs, SKIP_BUILD=1 measures
# the binary already in target/release (when the tree does not build right now), NICE (-19 as
# root, else 0) for every process measured.
# Prints one Markdown table on stdout; progress goes to stderr. No test asserts speed.

IDLE_CONNS="${IDLE_CONNS:-10000}"
TARGETS=(direct gateway nginx haproxy)
# shellcheck source=load-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Holding IDLE_CONNS idle connections needs as many descriptors in the proxy and in the
# driver; if the limit is lower than wanted, use what it allows.
clamp_idle_conns() {
    local room=$(( $(ulimit -n) - 1024 ))
    if (( IDLE_CONNS > room )); then
        log "descriptor limit $(ulimit -n): holding $room idle connections instead of $IDLE_CONNS"
        IDLE_CONNS=$room
    fi
}

start_nginx_proxy() {
    {
        nginx_common nginx
        echo "http {"
        nginx_http_common nginx
        nginx_upstream backend "${PORT[direct]}"
        echo "    server {"
        echo "        listen 127.0.0.1:${PORT[nginx]} backlog=4096;"
        nginx_proxy_location
        echo "    }"
        echo "}"
    } >"$WORK/nginx.conf"
    start_nginx nginx "$PROXY_CORE"
    PID[nginx]=$LAST_PID
}

start_haproxy() {
    # maxconn is set explicitly: derived from the descriptor limit it would stay below 10,000.
    # HAProxy budgets two descriptors per connection (client and server side) and by default
    # refuses to start when the limit is short of that; idle client connections need only
    # one each, so "no strict-limits" lets it start with a warning.
    cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn $(( IDLE_CONNS + 512 ))
    no strict-limits

$(haproxy_defaults "maxconn $(( IDLE_CONNS + 512 ))")

frontend fe
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend be

backend be
    server backend 127.0.0.1:${PORT[direct]}
EOF
    # -db: stay in the foreground as one process, so $! is the process doing the work.
    start_pinned "$PROXY_CORE" haproxy haproxy -db -f "$WORK/haproxy.cfg"
    PID[haproxy]=$LAST_PID
}

start_gateway() {
    local admin_port="$1"
    start_gateway_config <<EOF
$(gateway_base_sections "$admin_port")

[[routes]]
name = "all"
path_prefix = "/"
service = "backend"
EOF
}

# Memory per idle connection, one proxy at a time; the driver shares core 1 with the backend.
idle_round() {
    local target="$1" pids out
    # nginx: the worker holds the connections; the master is not counted.
    if [[ "$target" == nginx ]]; then
        pids="$(cat /proc/"${PID[nginx]}"/task/*/children)"
    else
        pids="${PID[$target]}"
    fi
    log "idle connections: $IDLE_CONNS to $target"
    out="$(pinned "$LOAD_CORE" timeout 300 python3 "$HERE/idle_conns.py" \
        --port "${PORT[$target]}" --conns "$IDLE_CONNS" $(printf -- '--pid %s ' $pids))" ||
        die "idle_conns.py failed against $target"
    log "  $out"
    echo "$target $out" >>"$WORK/idle.txt"
}

# --- report ------------------------------------------------------------------------------

print_table() {
    python3 - "$WORK/results.tsv" "$WORK/idle.txt" "$(cat "$WORK/busy_before")" "$(cat "$WORK/busy_after")" <<'EOF'
import statistics, sys
names = {"direct": "backend (direct)", "gateway": "gateway", "nginx": "nginx", "haproxy": "HAProxy"}
rows = {}
others_proxy, others_load = [], []  # share of each core taken by other work, per round
for line in open(sys.argv[1]):
    t, rps, p50, p99, cpu, core, other_proxy, other_load, err = line.split()
    r = rows.setdefault(t, {"rps": [], "p50": [], "p99": [], "cpu": [], "core": [], "err": 0})
    for k, v in (("rps", rps), ("p50", p50), ("p99", p99), ("cpu", cpu), ("core", core)):
        r[k].append(float(v))
    r["err"] += int(err)
    if other_proxy != "-":
        others_proxy.append(float(other_proxy))
    others_load.append(float(other_load))
idle = {}
for line in open(sys.argv[2]):
    t, *kv = line.split()
    idle[t] = dict(x.split("=") for x in kv)
med = {t: {k: statistics.median(v) for k, v in r.items() if k != "err"} for t, r in rows.items()}
print("| target | req/s | p50 ms | p99 ms | × direct | × HAProxy | p99 × HAProxy | CPU µs/req (core %) | KiB/idle conn |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for t in names:
    m = med[t]
    kib = idle.get(t, {}).get("kib_per_conn", "–")
    print(f"| {names[t]} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rps'] / med['direct']['rps']:.2f} "
          f"| {m['rps'] / med['haproxy']['rps']:.2f} | {m['p99'] / med['haproxy']['p99']:.2f} | {m['cpu']:.1f} ({m['core']:.0f}%) | {kib} |")
print()
print(f"Medians of {len(rows['direct']['rps'])} interleaved rounds per target. CPU µs/req: user+system time "
      "of the proxy process (nginx: master and worker) per request, and the share of its core it used; "
      "for the direct row, the backend's (which shares core 1 with wrk).")
def share(xs):
    return f"median {statistics.median(xs):.0f}%, max {max(xs):.0f}%, {sum(x > 5 for x in xs)} of {len(xs)} rounds above 5%"
print(f"Other work on the machine: {sys.argv[3]}% of all cores busy just before the rounds, {sys.argv[4]}% just after. "
      f"During the rounds, share of the proxy core used by other work: {share(others_proxy)}; "
      f"of the load core: {share(others_load)} (other work also fills idle time, so these are upper bounds "
      "on what it took from the measurement).")
for t in names:
    if rows[t]["err"]:
        print(f"Warning: {names[t]}: {rows[t]['err']} socket errors or non-2xx answers across the rounds.")
    i = idle.get(t)
    if i and int(i["failed"]):
        print(f"Warning: {names[t]}: {i['failed']} idle connections failed or were closed; KiB/conn is over {i['conns']}.")
EOF
}

main() {
    install_tools wrk nginx haproxy curl
    check_prerequisites
    raise_fd_limit
    clamp_idle_conns
    build_gateway

    local ports
    read -ra ports <<<"$(free_ports 5)"
    PORT[direct]=${ports[0]} PORT[gateway]=${ports[1]} PORT[nginx]=${ports[2]} PORT[haproxy]=${ports[3]}

    start_backend
    wait_ready direct
    start_gateway "${ports[4]}"
    start_nginx_proxy
    start_haproxy
    for t in gateway nginx haproxy; do wait_ready "$t"; done
    log "ready: backend :${PORT[direct]}, gateway :${PORT[gateway]}, nginx :${PORT[nginx]}, haproxy :${PORT[haproxy]}"

    wait_quiet
    : >"$WORK/results.tsv"
    : >"$WORK/idle.txt"
    load_rounds
    machine_busy_pct >"$WORK/busy_after" # our processes are idle now: this is other work
    for t in gateway nginx haproxy; do idle_round "$t"; done
    print_table
}

main "$@"
