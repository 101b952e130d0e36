# Run from the repository root: bash load-tests/features.sh
#
# What each gateway feature costs, as a ratio to the plain proxy route, measured the way
# run.sh measures (lib.sh: the gateway alone on core 0 with one worker; wrk -t1 -c64 and a
# fast nginx backend on core 1; interleaved rounds, medians). One gateway process holds one
# route per feature, all to the same backend:
#   /plain (no policy, the baseline), /jwt (RS256, one token minted here), /apikey,
#   /limited (local per-IP limit that never triggers), /redis-limited (the same in Redis, when
#   redis-server is installed), /cached (the hit path), /transformed (header set with
#   {request_id} + allow_ips), /aggregate (two JSON parts from the same backend).
# Telemetry is process-wide, so two more gateways on core 0 serve /plain with
# `access_log = true` (stdout to /dev/null), and with the access log plus OTLP traces
# exported to the backend (a sink location answering 200), and a third, the same with
# telemetry off, is their baseline (two processes of one binary and config can differ by a
# few percent; the twin takes that out of the telemetry ratios). They sit idle while the
# others are measured, and their rounds are interleaved with the rest.
#
# Knobs: those of run.sh (ROUNDS, DURATION, CONNS, PROXY_CORE, LOAD_CORE, QUIET_WAIT,
# KEEP_WORK, SKIP_BUILD, NICE); ROUNDS defaults to 7 here (10 routes: about 3 minutes).
# No Redis: NO_REDIS=1.
# Prints one Markdown table on stdout; progress goes to stderr.

ROUNDS="${ROUNDS:-7}"
# shellcheck source=load-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The backend's extra answers: a small JSON object for the aggregate parts, and an OTLP sink.
BACKEND_LOCATIONS="$(cat <<'EOF'
        location = /json { default_type application/json; return 200 '{"ok":true,"n":1}'; }
        location = /v1/traces { default_type application/json; return 200 '{}'; }
EOF
)"

declare -A GW    # target -> the gateway (log name) serving it
declare -A ADMIN # gateway -> its admin port
declare -A WHAT=(
    [plain]="/plain, no policy (baseline)"
    [jwt]="/jwt, RS256 bearer token"
    [apikey]="/apikey, x-api-key header"
    [limited]="/limited, local per-IP limit"
    [redis-limited]="/redis-limited, Redis per-IP limit"
    [cached]="/cached, cache hit"
    [transformed]="/transformed, set 2 headers + allow_ips"
    [aggregate]="/aggregate, 2 JSON parts"
    [access-log]="/plain, access_log = true"
    [traced]="/plain, access_log + OTLP traces"
    [twin]="/plain, the telemetry gateways' twin, telemetry off"
)

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

# An RSA key pair in the temp dir and one RS256 token valid for an hour: JWT.
mint_jwt() {
    local head claims sig
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/jwt-private.pem" 2>/dev/null
    openssl pkey -in "$WORK/jwt-private.pem" -pubout -out "$WORK/jwt-public.pem"
    head="$(printf '%s' '{"alg":"RS256","typ":"JWT"}' | b64url)"
    claims="$(printf '{"sub":"bench","exp":%d}' $(( $(date +%s) + 3600 )) | b64url)"
    sig="$(printf '%s.%s' "$head" "$claims" | openssl dgst -sha256 -sign "$WORK/jwt-private.pem" -binary | b64url)"
    JWT="$head.$claims.$sig"
}

start_redis() {
    PORT[redis]="$1"
    start_pinned "$LOAD_CORE" redis redis-server --bind 127.0.0.1 --port "${PORT[redis]}" \
        --save '' --appendonly no
    HELPERS+=("$LAST_PID")
    for _ in $(seq 100); do
        [[ "$(redis-cli -p "${PORT[redis]}" ping 2>/dev/null)" == PONG ]] && return
        kill -0 "$LAST_PID" 2>/dev/null || break
        sleep 0.1
    done
    tail -n 20 "$WORK/redis.log" >&2
    die "redis-server not ready on ${PORT[redis]}"
}

# route NAME KEY=VALUE...: one [[routes]] table at /NAME to the backend.
route() {
    printf '\n[[routes]]\nname = "%s"\npath = "/%s"\n' "$1" "$1"
    shift
    printf '%s\n' "$@"
}

# gateway_config PORT ADMIN_PORT TELEMETRY_LINES: every feature route, to stdout.
gateway_config() {
    local redis_limit=()
    cat <<EOF
$(gateway_listen_sections "$1" "$2")

[telemetry]
$3

[services.backend]
endpoints = ["http://127.0.0.1:${PORT[direct]}"]

[auth.bearer]
type = "jwt"
algorithms = ["RS256"]
public_key_file = "$WORK/jwt-public.pem"

[auth.keys]
type = "api_key"
header = "x-api-key"
keys = [{ consumer = "bench", sha256 = "$API_KEY_SHA256" }]

[rate_limits.local]
requests = 100000000
per = "1s"
key = "ip"
EOF
    if [[ -n "${PORT[redis]:-}" ]]; then
        printf '\n[rate_limits.shared]\nrequests = 100000000\nper = "1s"\nkey = "ip"\nstore = "redis"\n'
        printf '\n[redis]\nurl = "redis://127.0.0.1:%s"\n' "${PORT[redis]}"
        redis_limit=('service = "backend"' 'rate_limit = ["shared"]')
    fi
    route plain 'service = "backend"'
    route jwt 'service = "backend"' 'auth = ["bearer"]'
    route apikey 'service = "backend"' 'auth = ["keys"]'
    route limited 'service = "backend"' 'rate_limit = ["local"]'
    [[ ${#redis_limit[@]} -eq 0 ]] || route redis-limited "${redis_limit[@]}"
    route cached 'service = "backend"' 'cache = { ttl = "60s" }'
    route transformed 'service = "backend"' \
        'request_headers = { set = { "x-env" = "prod", "x-rid" = "{request_id}" } }' \
        'allow_ips = ["127.0.0.1/32"]'
    route aggregate 'aggregate = [' \
        '  { service = "backend", path = "/json", into = "a" },' \
        '  { service = "backend", path = "/json", into = "b" },' ']'
}

# start_gw NAME TELEMETRY_LINES TARGET...: one gateway on core 0 whose /TARGET routes (or
# /plain for the telemetry targets) become the given targets. Stdout (the access log) goes
# to /dev/null, stderr to NAME.log.
start_gw() {
    local name="$1" telemetry="$2" ports t
    shift 2
    read -ra ports <<<"$(free_ports 2)"
    gateway_config "${ports[0]}" "${ports[1]}" "$telemetry" >"$WORK/$name.toml"
    "$GATEWAY" check --config "$WORK/$name.toml" >&2 || die "the generated $name.toml does not validate"
    start_pinned "$PROXY_CORE" "$name" sh -c 'exec "$@" >/dev/null' sh \
        "$GATEWAY" run --config "$WORK/$name.toml"
    ADMIN[$name]=${ports[1]}
    for t in "$@"; do
        PID[$t]=$LAST_PID GW[$t]=$name PORT[$t]=${ports[0]}
        case "$t" in
            access-log | traced | twin) URL[$t]="http://127.0.0.1:${ports[0]}/plain" ;;
            *) URL[$t]="http://127.0.0.1:${ports[0]}/$t" ;;
        esac
    done
}

# Every route answers as it should before anything is measured: the backend's body (the
# aggregate: both parts), a cache hit on the second call, and 401 without credentials.
check_routes() {
    local t status
    for t in "${TARGETS[@]}"; do
        if [[ "$t" == aggregate ]]; then
            wait_ready "$t" '{*"a":{*"b":{*' "${GW[$t]}"
        else
            wait_ready "$t" "$BODY" "${GW[$t]}"
        fi
    done
    curl -sf --max-time 2 -D - -o /dev/null "${URL[cached]}" | grep -qi '^x-cache: *HIT' ||
        die "/cached did not answer from the cache"
    for t in jwt apikey; do
        status="$(curl -s --max-time 2 -o /dev/null -w '%{http_code}' "${URL[$t]}")"
        [[ "$status" == 401 ]] || die "/$t answered $status without credentials, not 401"
    done
    log "aggregate answers: $(curl -s --max-time 2 "${URL[aggregate]}")"
}

# After the rounds: evidence that the traces left and that the Redis limit went to Redis.
side_notes() {
    local metrics
    metrics="$(curl -sf --max-time 2 "http://127.0.0.1:${ADMIN[traced]}/metrics" |
        grep -E '^gateway_trace_(spans_exported_total|spans_dropped_total|exports_total)' | tr '\n' ' ')" || true
    echo "Traced gateway after the rounds: ${metrics:-no trace metrics}"
    if [[ -n "${PORT[redis]:-}" ]]; then
        echo "Redis after the rounds: $(redis-cli -p "${PORT[redis]}" info stats |
            grep -E '^total_commands_processed' | tr -d '\r')"
    fi
}

print_table() {
    python3 - "$WORK/results.tsv" "$(cat "$WORK/busy_before")" "$(cat "$WORK/busy_after")" \
        "${TARGETS[@]}" <<'EOF' 3< <(for t in "${TARGETS[@]}"; do printf '%s\t%s\n' "$t" "${WHAT[$t]}"; done)
import os, statistics, sys
path, busy_before, busy_after, *targets = sys.argv[1:]
what = dict(line.rstrip("\n").split("\t", 1) for line in os.fdopen(3) if line.strip())
rows = {t: [] for t in targets}  # target -> one dict per round, in round order
others_proxy, others_load = [], []  # share of each core taken by other work, per round
for line in open(path):
    t, rps, p50, p99, cpu, core, other_proxy, other_load, err = line.split()
    rows[t].append(dict(rps=float(rps), p50=float(p50), p99=float(p99), cpu=float(cpu), err=int(err)))
    others_proxy.append(float(other_proxy))
    others_load.append(float(other_load))
med = {t: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu")} for t, rs in rows.items()}
base = med["plain"]
print("| route | req/s | p50 ms | p99 ms | × plain | × plain, per round | CPU µs/req (Δ plain) |")
print("|---|---:|---:|---:|---:|---:|---:|")
for t in targets:
    m = med[t]
    per_round = [r["rps"] / p["rps"] for r, p in zip(rows[t], rows["plain"])]
    print(f"| {what[t]} | {m['rps']:,.0f} | {m['p50']:.2f} | {m['p99']:.2f} | {m['rps'] / base['rps']:.2f} "
          f"| {min(per_round):.2f}–{max(per_round):.2f} | {m['cpu']:.1f} ({m['cpu'] - base['cpu']:+.1f}) |")
print()
print(f"Medians of {len(rows['plain'])} interleaved rounds per route. × plain: median req/s over the plain "
      "route's; per round: the range of that ratio within each round. CPU µs/req: user+system time of the "
      "gateway process per request (every thread).")
def share(xs):
    return f"median {statistics.median(xs):.0f}%, max {max(xs):.0f}%, {sum(x > 5 for x in xs)} of {len(xs)} rounds above 5%"
print(f"Other work on the machine: {busy_before}% of all cores busy just before the rounds, {busy_after}% just after. "
      f"During the rounds, share of the proxy core used by other work: {share(others_proxy)}; "
      f"of the load core: {share(others_load)}.")
if "twin" in rows:
    def vs_twin(t):
        ratios = [r["rps"] / p["rps"] for r, p in zip(rows[t], rows["twin"])]
        cpu = med[t]["cpu"] - med["twin"]["cpu"]
        return f"{what[t]}: {statistics.median(ratios):.2f}× (rounds {min(ratios):.2f}–{max(ratios):.2f}), {cpu:+.1f} µs CPU/req"
    print("Telemetry against its twin (same config, telemetry off; per-round ratios, median): "
          + "; ".join(vs_twin(t) for t in ("access-log", "traced") if t in rows) + ".")
for t in targets:
    errors = sum(r["err"] for r in rows[t])
    if errors:
        print(f"Warning: {what[t]}: {errors} socket errors or non-2xx answers across the rounds.")
EOF
}

main() {
    local tools=(wrk nginx curl openssl)
    [[ "${NO_REDIS:-0}" == 1 ]] || ! command -v redis-server >/dev/null || tools+=(redis-server redis-cli)
    install_tools "${tools[@]}"
    check_prerequisites
    raise_fd_limit
    [[ -x "$GATEWAY" ]] && SKIP_BUILD="${SKIP_BUILD:-1}" # the binary run.sh builds, if it is there
    build_gateway

    local ports
    read -ra ports <<<"$(free_ports 2)"
    PORT[direct]=${ports[0]}
    start_backend
    wait_ready direct
    TARGETS=(plain jwt apikey limited)
    if [[ " ${tools[*]} " == *" redis-server "* ]]; then
        start_redis "${ports[1]}"
        TARGETS+=(redis-limited)
    else
        log "no redis-server (or NO_REDIS=1): /redis-limited is left out"
    fi
    TARGETS+=(cached transformed aggregate)

    mint_jwt
    API_KEY="bench-$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')"
    API_KEY_SHA256="$(printf '%s' "$API_KEY" | sha256sum | cut -d' ' -f1)"
    HEADER[jwt]="Authorization: Bearer $JWT"
    HEADER[apikey]="x-api-key: $API_KEY"

    start_gw features "access_log = false" "${TARGETS[@]}"
    start_gw logged "access_log = true" access-log
    start_gw traced "access_log = true
otlp_endpoint = \"http://127.0.0.1:${PORT[direct]}\"" traced
    start_gw twin "access_log = false" twin
    TARGETS+=(access-log traced twin)
    check_routes
    log "ready: backend :${PORT[direct]}, gateways :${PORT[plain]} :${PORT[access-log]} :${PORT[traced]} :${PORT[twin]}"

    wait_quiet
    : >"$WORK/results.tsv"
    load_rounds
    machine_busy_pct >"$WORK/busy_after"
    print_table
    side_notes
}

main "$@"
