# Run from the repository root: bash load-tests/instructions.sh
#
# Instructions per request, counted by callgrind: what a change costs on the request path,
# repeatable to a fraction of a percent whatever else the machine is doing (wall-clock ratios
# on a shared 2-core machine swing by 10-30% from round to round). Not a speed figure: it
# leaves out the kernel, cache misses and waiting, so confirm a change with run.sh or
# features.sh; use this to see where the instructions go and whether a change removed them.
#
# For each configuration, one gateway (`workers = 1`) runs under
# `valgrind --tool=callgrind`, proxying /plain to a fast nginx backend that also answers
# OTLP exports. After 2,000 warm-up requests the counters are zeroed, `h2load --h1 -n
# 20000 -c 8` runs (HTTP/1.1 keep-alive), and the counters are dumped: every thread of the
# gateway counts (workers, the access-log writer, the trace exporter), divided by the
# requests. (Traced: spans of warm-up requests may be sent inside the counted window and the
# last ones after it; a batch is a few hundred spans, so this moves the figure by well under
# 1%.) Configurations:
#   plain       telemetry off (the baseline)
#   access-log  access_log = true (stdout to /dev/null)
#   traced      access_log = true and OTLP traces to the backend (sample ratio 1.0)
#
# Knobs: CONFIGS (default "plain access-log traced"), REQUESTS (20000), SKIP_BUILD,
# KEEP_WORK (keep the callgrind files, for callgrind_annotate). Prints one Markdown table.

# shellcheck source=load-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONFIGS="${CONFIGS:-plain access-log traced}"
REQUESTS="${REQUESTS:-20000}"
# The backend's answer to the trace exporter.
BACKEND_LOCATIONS='        location = /v1/traces { default_type application/json; return 200 "{}"; }'

telemetry_lines() {
    case "$1" in
        plain) echo "access_log = false" ;;
        access-log) echo "access_log = true" ;;
        traced) printf 'access_log = true\notlp_endpoint = "http://127.0.0.1:%s"\n' "${PORT[direct]}" ;;
        *) die "unknown configuration $1 (plain, access-log, traced)" ;;
    esac
}

# measure CONFIG: print "CONFIG INSTRUCTIONS_PER_REQUEST".
measure() {
    local config="$1" ports url pid out total
    read -ra ports <<<"$(free_ports 2)"
    PORT[gateway]=${ports[0]}
    url="http://127.0.0.1:${ports[0]}/plain"
    {
        gateway_base_sections "${ports[1]}" | sed '/^\[telemetry\]$/,/^$/d'
        printf '\n[telemetry]\n%s\n' "$(telemetry_lines "$config")"
        printf '\n[[routes]]\nname = "plain"\npath = "/plain"\nservice = "backend"\n'
    } >"$WORK/$config.toml"
    "$GATEWAY" check --config "$WORK/$config.toml" >&2 || die "the generated $config.toml does not validate"
    out="$WORK/callgrind.$config"
    setsid valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$GATEWAY" run --config "$WORK/$config.toml" >/dev/null 2>"$WORK/$config.log" &
    pid=$!
    STARTED+=("$pid")
    # Under valgrind the gateway starts some 50 times slower than natively.
    for _ in $(seq 600); do
        curl -sf --max-time 2 -o /dev/null "$url" && break
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$WORK/$config.log" >&2; die "$config: the gateway exited"; }
        sleep 0.2
    done
    h2load --h1 -n 2000 -c 8 "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    h2load --h1 -n "$REQUESTS" -c 8 "$url" >"$WORK/$config.h2load"
    grep -q "status codes: $REQUESTS 2xx" "$WORK/$config.h2load" ||
        die "$config: not every request got a 2xx: $(grep 'status codes' "$WORK/$config.h2load")"
    callgrind_control -d "$pid" >/dev/null
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    # The dump made on request (out.1): the counts since they were zeroed.
    total="$(awk '/^(summary|totals):/ { print $2; exit }' "$out.1")"
    [[ -n "$total" ]] || die "$config: no counts in $out.1"
    echo "$config $((total / REQUESTS))"
}

main() {
    install_tools nginx curl h2load:nghttp2-client valgrind
    check_prerequisites
    build_gateway
    local ports config results=()
    read -ra ports <<<"$(free_ports 1)"
    PORT[direct]=${ports[0]}
    start_backend
    wait_ready direct
    for config in $CONFIGS; do
        log "measuring $config under callgrind"
        results+=("$(measure "$config")")
    done
    python3 - "${results[@]}" <<'EOF'
import sys
rows = [arg.split() for arg in sys.argv[1:]]
base = dict(rows).get("plain")
print("| gateway | instructions/request | Δ plain |")
print("|---|---:|---:|")
for name, value in rows:
    value = int(value)
    delta = f"+{value - int(base):,} (+{(value / int(base) - 1) * 100:.1f}%)" if base and name != "plain" else ""
    print(f"| {name} | {value:,} | {delta} |")
EOF
}

main "$@"
