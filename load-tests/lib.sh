# Shared by run.sh and features.sh; not run on its own. Sourced after the caller has set
# any knob defaults of its own (ROUNDS, TARGETS, ...). See run.sh for the knobs.
#
# Layout (../shared/PERFORMANCE.md): the proxy under test alone on PROXY_CORE; wrk and the
# fast nginx backend together on LOAD_CORE. Interleaved rounds, one line per round in
# $WORK/results.tsv, medians and ratios printed by the caller.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
SCRIPT="$(basename "$0")"
ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-2}"
CONNS="${CONNS:-64}"
PROXY_CORE="${PROXY_CORE:-0}"
LOAD_CORE="${LOAD_CORE:-1}"
GATEWAY="${CARGO_TARGET_DIR:-$ROOT/target}/release/gateway"
BODY="0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" # 64 bytes
# On a shared machine a compile or test run lands on the proxy's core and takes half of it.
# A raised priority keeps the measured processes ahead of such work (only root may raise it).
if [[ $EUID -eq 0 ]]; then NICE="${NICE:--19}"; else NICE="${NICE:-0}"; fi
HZ="$(getconf CLK_TCK)" # the unit of /proc/PID/stat and /proc/stat times

# sh -c "$PIN" NICE CORE CMD...: exec CMD pinned to CORE at priority NICE. Run under setsid:
# with autogroup scheduling (the default) CPU is shared between sessions first, and a nice
# value counts only inside its session, so each measured process gets a session of its own
# and the priority is set on that session's group as well as on the process.
PIN='echo "$0" >/proc/self/autogroup 2>/dev/null; core=$1; shift; exec nice -n "$0" taskset -c "$core" "$@"'

WORK="$(mktemp -d)"
STARTED=()     # every process this script started, stopped by pid on exit
declare -A PORT # target -> port wrk and the idle driver hit
declare -A PID  # target -> main pid (nginx: the master; several targets may share one process)
declare -A URL    # target -> URL wrk hits (default http://127.0.0.1:PORT/)
declare -A HEADER # target -> one extra request header for wrk and the readiness check
HELPERS=()        # our own processes on the load core besides the backend (not "other work")

log() { echo "$SCRIPT: $*" >&2; }
die() { log "error: $*"; exit 1; }

cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Bounded wait: a process that ignores SIGTERM for 5 s is killed.
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_WORK:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- tools ------------------------------------------------------------------------------

# install_tools TOOL[:PACKAGE]...: wrk, nginx, haproxy, redis-server, curl, h2load
# (h2load:nghttp2-client) come from the distribution; install the missing ones when root.
# PACKAGE defaults to the tool's own name.
install_tools() {
    local missing=() spec
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null || missing+=("${spec#*:}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    [[ $EUID -eq 0 ]] || die "missing ${missing[*]}; install them (or run as root to let this script apt-get them)"
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    apt-get update -qq
    # RUNLEVEL=1: the packages' postinst must not start system-wide nginx/haproxy services.
    RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

check_prerequisites() {
    local tool
    for tool in taskset setsid python3 cargo; do
        command -v "$tool" >/dev/null || die "$tool is needed"
    done
    (( $(nproc) > PROXY_CORE && $(nproc) > LOAD_CORE )) ||
        die "needs cores $PROXY_CORE and $LOAD_CORE (this machine has $(nproc))"
}

# 10,000 idle connections need 10,000 descriptors in the proxy and in the driver. Children
# Children inherit this limit (10,000 idle connections need 10,000 descriptors).
raise_fd_limit() {
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
}

build_gateway() {
    if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
        [[ -x "$GATEWAY" ]] || die "SKIP_BUILD=1 but no binary at $GATEWAY"
        log "SKIP_BUILD=1: measuring the gateway binary already built"
        return
    fi
    log "building the gateway (cargo build --release -p gateway)"
    (cd "$ROOT" && cargo build --release -p gateway >&2) || die "the gateway does not build"
    [[ -x "$GATEWAY" ]] || die "no binary at $GATEWAY"
}

# --- processes ---------------------------------------------------------------------------

# N distinct free loopback ports: bind them all at once so they differ, then release them.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# pinned CORE CMD...: run CMD on one core at the measuring priority; every thread and
# child it creates inherits both.
pinned() {
    setsid sh -c "$PIN" "$NICE" "$@"
}

# start_pinned CORE LOGNAME CMD...: run CMD pinned in the background; sets LAST_PID.
# Not through pinned(): a function sent to the background runs in a subshell, and $! would be
# that subshell. setsid, sh, nice and taskset all exec, so here $! is CMD itself.
start_pinned() {
    local core="$1" name="$2"
    shift 2
    setsid sh -c "$PIN" "$NICE" "$core" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    STARTED+=("$LAST_PID")
}

# The pids whose CPU and memory belong to a target: nginx's work happens in its worker(s).
worker_pids() {
    local pid="$1" kids
    kids="$(cat /proc/"$pid"/task/*/children 2>/dev/null || true)"
    echo "$pid" $kids
}

# Poll until the target answers 200 with the 64-byte body, or give up after ~10 s.
# await_body PID LOGNAME URL PATTERN [CURL ARGS...]: poll URL until it answers 200 with a
# body matching the glob PATTERN, or give up after ~10 s; PID must stay alive meanwhile.
await_body() {
    local pid="$1" name="$2" url="$3" pattern="$4" body
    shift 4
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$WORK/$name.log" >&2; die "$name exited"; }
        if body="$(curl -sf --max-time 1 "$@" "$url")"; then
            # shellcheck disable=SC2053 # a glob on purpose
            [[ "$body" == $pattern ]] || die "$url answered '$body', not $pattern"
            return
        fi
        sleep 0.1
    done
    tail -n 20 "$WORK/$name.log" >&2
    die "$name not ready at $url"
}

# The URL of a target, and its extra header as arguments for curl or wrk.
target_url() { echo "${URL[$1]:-http://127.0.0.1:${PORT[$1]}/}"; }
header_args() { [[ -z "${HEADER[$1]:-}" ]] || printf '%s\n' -H "${HEADER[$1]}"; }

# wait_ready TARGET [PATTERN] [LOGNAME]: poll until the target answers 200 with a body
# matching PATTERN (default: the backend's 64 bytes); LOGNAME is its process's log.
wait_ready() {
    local hdr
    mapfile -t hdr < <(header_args "$1")
    await_body "${PID[$1]}" "${3:-$1}" "$(target_url "$1")" "${2:-$BODY}" "${hdr[@]}"
}

# Lines every nginx here shares: one worker, its files in the temp dir, no access log, and
# keep-alive connections that are not cut after 1000 requests (HAProxy does not cut them).
nginx_common() {
    local name="$1"
    # As root, workers would switch to "nobody" and could not reach the private temp dir.
    [[ $EUID -eq 0 ]] && echo "user root;"
    cat <<EOF
worker_processes 1;
worker_rlimit_nofile $(ulimit -n);
daemon off;
pid $WORK/$name.pid;
error_log $WORK/$name.log warn;
events { worker_connections $(( $(ulimit -n) - 64 )); }
EOF
}

nginx_http_common() {
    local name="$1"
    cat <<EOF
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/$name-tmp/body;
    proxy_temp_path $WORK/$name-tmp/proxy;
    fastcgi_temp_path $WORK/$name-tmp/fastcgi;
    uwsgi_temp_path $WORK/$name-tmp/uwsgi;
    scgi_temp_path $WORK/$name-tmp/scgi;
EOF
}

start_nginx() {
    local name="$1" conf="$WORK/$1.conf" core="$2"
    mkdir -p "$WORK/$name-tmp"
    # -e: the error log before the config is read, so nothing under /var/log is touched.
    start_pinned "$core" "$name" nginx -p "$WORK/" -e "$WORK/$name.log" -c "$conf"
}


# nginx_upstream NAME PORT: an upstream block keeping connections to 127.0.0.1:PORT alive.
nginx_upstream() {
    cat <<EOF
    upstream $1 {
        server 127.0.0.1:$2;
        keepalive 64;
        keepalive_requests 1000000;
    }
EOF
}

# The location every measured nginx proxies HTTP with: all to upstream "backend", keep-alive.
nginx_proxy_location() {
    cat <<'EOF'
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
EOF
}

# haproxy_defaults [LINE...]: the defaults section every measured HAProxy shares, plus LINEs.
haproxy_defaults() {
    printf '%s\n' "defaults" "    mode http" "    option http-keep-alive" "    http-reuse always"
    [[ $# -eq 0 ]] || printf '    %s\n' "$@"
    printf '%s\n' "    timeout connect 5s" "    timeout client 300s" "    timeout server 30s" \
        "    timeout http-keep-alive 300s"
}

# gateway_base_sections ADMIN_PORT: gateway_listen_sections on PORT[gateway], telemetry off,
# and the service "backend" at PORT[direct]: what run.sh's and h2.sh's gateways share.
gateway_base_sections() {
    cat <<EOF
$(gateway_listen_sections "${PORT[gateway]}" "$1")

[telemetry]
access_log = false

[services.backend]
endpoints = ["http://127.0.0.1:${PORT[direct]}"]
EOF
}

# start_gateway_config: write stdin to $WORK/gateway.toml, validate it, and start the gateway
# with it on the proxy core (PID[gateway]).
start_gateway_config() {
    cat >"$WORK/gateway.toml"
    "$GATEWAY" check --config "$WORK/gateway.toml" >&2 || die "the generated gateway.toml does not validate"
    start_pinned "$PROXY_CORE" gateway "$GATEWAY" run --config "$WORK/gateway.toml"
    PID[gateway]=$LAST_PID
}

# gateway_listen_sections PORT ADMIN_PORT: the [server] and [admin] sections every measured
# gateway shares: one worker, long keep-alive, and no connection caps (one client address
# holds every connection here, 10,000 idle ones included).
gateway_listen_sections() {
    cat <<EOF
[server]
listen = "127.0.0.1:$1"
workers = 1
idle_timeout = "300s"
shutdown_grace = "1s"
max_connections = 0
max_connections_per_client = 0

[admin]
listen = "127.0.0.1:$2"
EOF
}

# The backend: 64 bytes on every path, plus whatever location blocks BACKEND_LOCATIONS holds.
start_backend() {
    {
        nginx_common direct
        echo "http {"
        nginx_http_common direct
        cat <<EOT
    default_type text/plain;
    server {
        listen 127.0.0.1:${PORT[direct]} backlog=4096;
        location / { return 200 '$BODY'; }
${BACKEND_LOCATIONS:-}
    }
}
EOT
    } >"$WORK/direct.conf"
    # The backend shares core 1 with wrk, so it never competes with the proxy under test.
    start_nginx direct "$LOAD_CORE"
    PID[direct]=$LAST_PID
}


# --- the machine -------------------------------------------------------------------------

# Busy share of all cores over one second, from /proc/stat (user+nice+system+irq+softirq+steal).
machine_busy_pct() {
    local a b
    read -ra a <<<"$(head -n 1 /proc/stat)"
    sleep 1
    read -ra b <<<"$(head -n 1 /proc/stat)"
    local busy=$(( (b[1] + b[2] + b[3] + b[6] + b[7] + b[8]) - (a[1] + a[2] + a[3] + a[6] + a[7] + a[8]) ))
    local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) ))
    echo $(( 100 * busy / (busy + idle + 1) ))
}

# Other work on the machine (a compile, a test run) skews every figure. Wait up to
# QUIET_WAIT seconds (default 60) for it to stop, i.e. for 3 quiet seconds in a row (a test
# run pauses between its compiles); then measure anyway and say so.
wait_quiet() {
    local busy quiet=0
    for _ in $(seq "${QUIET_WAIT:-60}"); do
        busy="$(machine_busy_pct)"
        if (( busy < 10 )); then quiet=$(( quiet + 1 )); else quiet=0; fi
        (( quiet >= 3 )) && { log "machine ${busy}% busy before the rounds"; echo "$busy" >"$WORK/busy_before"; return; }
    done
    log "warning: machine still ${busy}% busy with other work; figures will be noisy"
    echo "$busy" >"$WORK/busy_before"
}

# --- measurements ------------------------------------------------------------------------

# Busy ticks of one core since boot, from its /proc/stat line (user+nice+system+irq+softirq+steal).
core_busy_ticks() {
    local f
    read -ra f <<<"$(grep "^cpu$1 " /proc/stat)"
    echo $(( f[1] + f[2] + f[3] + f[6] + f[7] + f[8] ))
}

# User+system CPU ticks of a set of processes (all their threads), from /proc/PID/stat.
cpu_ticks() {
    local pid stat total=0 fields
    for pid in "$@"; do
        stat="$(cat /proc/"$pid"/stat 2>/dev/null)" || continue
        read -ra fields <<<"${stat##*) }" # after "(comm) ": field 12 is utime, 13 is stime
        total=$(( total + fields[11] + fields[12] ))
    done
    echo "$total"
}

# Share (%) of one core over SECONDS that went to TICKS of work; never below 0.
pct_of_core() {
    local ticks="$1" seconds="$2"
    (( ticks < 0 )) && ticks=0
    echo $(( 100 * ticks / (HZ * seconds) ))
}

# driver_round TARGET SECONDS RECORD PARSER DRIVER...: one round at a target with one load
# driver (wrk here, h2load in h2.sh), run pinned on the load core. When RECORD is "record",
# `PARSER TARGET TICKS SECONDS OTHER_PROXY OTHER_LOAD` turns the driver's output (on stdin)
# into one line appended to results:
#   target rps p50_ms p99_ms cpu_us_per_req core_pct other_proxy_core_pct other_load_core_pct errors
# core_pct: the share of its core the target used; near 100 when the proxy is the bottleneck,
# as intended. The two "other" figures: the share of each core that went to anything but the
# processes measured (a compile, a test run), i.e. how far to trust the round. For the direct
# targets (named direct*, served from the load core) the proxy core is not in use, so that
# figure is "-".
driver_round() {
    local target="$1" seconds="$2" record="$3" parser="$4"
    shift 4
    local pids backend_pids t0 b0 c0 l0 t1 b1 c1 l1 out driver_ticks other_proxy other_load line
    pids="$(worker_pids "${PID[$target]}")"
    backend_pids="$(worker_pids "${PID[direct]}") ${HELPERS[*]}"
    t0="$(cpu_ticks $pids)" b0="$(cpu_ticks $backend_pids)"
    c0="$(core_busy_ticks "$PROXY_CORE")" l0="$(core_busy_ticks "$LOAD_CORE")"
    # `times` after the driver: its last line is the CPU time of this subshell's children,
    # i.e. the driver.
    out="$(pinned "$LOAD_CORE" timeout $(( seconds + 30 )) "$@" && times)" ||
        die "$1 failed against $target"
    c1="$(core_busy_ticks "$PROXY_CORE")" l1="$(core_busy_ticks "$LOAD_CORE")"
    t1="$(cpu_ticks $pids)" b1="$(cpu_ticks $backend_pids)"
    [[ "$record" == record ]] || return 0

    driver_ticks="$(tail -n 1 <<<"$out" | awk -v hz="$HZ" '
        function sec(v) { sub(/s$/, "", v); split(v, a, "m"); return a[1] * 60 + a[2] }
        { printf "%d\n", (sec($1) + sec($2)) * hz }')"
    other_load="$(pct_of_core $(( l1 - l0 - (b1 - b0) - driver_ticks )) "$seconds")"
    if [[ "$target" == direct* ]]; then
        other_proxy=-
    else
        other_proxy="$(pct_of_core $(( c1 - c0 - (t1 - t0) )) "$seconds")"
    fi
    line="$("$parser" "$target" $(( t1 - t0 )) "$seconds" "$other_proxy" "$other_load" <<<"$out")"
    log "  $line"
    echo "$line" >>"$WORK/results.tsv"
}

# wrk_round TARGET SECONDS RECORD: one wrk round (-t1 -c$CONNS) at a target; see driver_round.
wrk_round() {
    local hdr
    mapfile -t hdr < <(header_args "$1")
    driver_round "$1" "$2" "$3" parse_wrk \
        wrk -t1 -c"$CONNS" -d"$2s" --latency "${hdr[@]}" "$(target_url "$1")"
}

# wrk's text → one results line. Latencies come as 850.00us, 1.20ms or 1.01s; all become ms.
parse_wrk() {
    awk -v target="$1" -v ticks="$2" -v seconds="$3" -v other_proxy="$4" -v other_load="$5" -v hz="$HZ" '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /m$/)  return v * 60000
            if (v ~ /s$/)  return v * 1000
            return v + 0
        }
        /requests in/        { requests = $1 }
        /^Requests\/sec:/    { rps = $2 }
        /^ +50%/             { p50 = ms($2) }
        /^ +99%/             { p99 = ms($2) }
        /Socket errors:/     { gsub(/,/, ""); errors += $4 + $6 + $8 + $10 }
        /Non-2xx/            { errors += $NF }
        END {
            cpu = requests > 0 ? ticks / hz * 1e6 / requests : 0
            printf "%s %.0f %.3f %.3f %.1f %.0f %s %s %d\n", target, rps, p50, p99, cpu,
                100 * ticks / hz / seconds, other_proxy, other_load, errors
        }'
}

# load_rounds [ROUND_FN]: interleaved rounds of ROUND_FN (default wrk_round) over TARGETS,
# with the starting target rotated each round so no target always follows the same neighbour.
load_rounds() {
    local round i n=${#TARGETS[@]} round_fn="${1:-wrk_round}"
    log "warm-up: 1 s per target"
    for i in "${TARGETS[@]}"; do "$round_fn" "$i" 1 skip; done
    for round in $(seq "$ROUNDS"); do
        log "round $round/$ROUNDS (${DURATION} s per target)"
        for i in $(seq 0 $(( n - 1 ))); do
            "$round_fn" "${TARGETS[$(( (i + round - 1) % n ))]}" "$DURATION" record
        done
    done
}

# Memory per idle connection, one proxy at a time; the driver shares core 1 with the backend.
