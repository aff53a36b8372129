#!/usr/bin/env bash
# Debian's prometheus-node-exporter serves every metric of ksm-balloon's
# metrics file while the file is rewritten again and again, and no scrape
# ever sees half a file.
#
# node_exporter runs on 127.0.0.1 only (a free port), with only its textfile
# collector, on a scratch directory. examples/metrics_writer.rs rewrites the
# file with ksm-balloon's atomic writer as fast as it can while
# tests/metrics/scrape_check.py scrapes (5 s timeout per request) and checks
# each scrape against a complete file: no collector error, every series
# there, all figures of one generation. Then the same with the writer
# rewriting the file in place: the check must catch torn files there, or it
# proves nothing. Needs prometheus-node-exporter (tests/deps.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$REPO/tests/lib/libvirtd.sh" # kb_log, kb_die, kb_wait_until
SECONDS_EACH=${KB_SCRAPE_SECONDS:-10}
GENERATIONS=${KB_WRITER_GENERATIONS:-1000000}

EXPORTER=$(command -v prometheus-node-exporter || true)
[ -n "$EXPORTER" ] || kb_die "prometheus-node-exporter is missing: run tests/deps.sh"

cd "$REPO"
cargo build --quiet --example metrics_writer
WRITER=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/examples/metrics_writer
[ -x "$WRITER" ] || kb_die "$WRITER was not built"

WORK=$(mktemp -d)
EXPORTER_PID='' WRITER_PID=''
# Under set -e a failing command in the EXIT trap becomes the exit status:
# every step here must succeed whatever state it finds.
cleanup() {
    if [ -n "$WRITER_PID" ]; then
        kill "$WRITER_PID" 2>/dev/null || true
    fi
    if [ -n "$EXPORTER_PID" ]; then
        kill "$EXPORTER_PID" 2>/dev/null || true
        wait "$EXPORTER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/textfile"
PROM=$WORK/textfile/ksm-balloon.prom

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT/metrics
"$EXPORTER" --web.listen-address="127.0.0.1:$PORT" --collector.disable-defaults \
    --collector.textfile --collector.textfile.directory="$WORK/textfile" \
    >"$WORK/exporter.log" 2>&1 &
EXPORTER_PID=$!
kb_wait_until 30 "node_exporter to answer on $URL" curl -fsS --max-time 2 -o /dev/null "$URL" ||
    { cat "$WORK/exporter.log" >&2; kb_die "node_exporter did not start"; }

# The reference: one complete file, as the atomic writer writes it.
"$WRITER" "$PROM" 1
cp "$PROM" "$WORK/reference.prom"
kb_wait_until 10 "node_exporter to serve the file" \
    sh -c "curl -fsS --max-time 2 '$URL' | grep -q '^ksm_balloon_resizes_total 1\$'" ||
    kb_die "node_exporter does not serve $PROM"

# run_writer MODE: rewrites the file while scrape_check.py scrapes; prints
# the checker's JSON.
run_writer() {
    "$WRITER" "$PROM" "$GENERATIONS" "$@" &
    WRITER_PID=$!
    python3 "$HERE/scrape_check.py" "$URL" "$WORK/reference.prom" "$SECONDS_EACH" "$WRITER_PID"
    kill "$WRITER_PID" 2>/dev/null || true
    wait "$WRITER_PID" 2>/dev/null || true
    WRITER_PID=
}

kb_log "atomic writer: scraping for ${SECONDS_EACH}s while the file is rewritten"
atomic=$(run_writer)
kb_log "atomic writer: $atomic"
kb_log "in-place writer (the torn writes the check must catch)"
torn=$(run_writer --in-place)
kb_log "in-place writer: $torn"
# Leave node_exporter a whole file again.
"$WRITER" "$PROM" 1

python3 - "$atomic" "$torn" <<'PY'
import json, sys
a, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
fail = []
if a["bad"]:
    fail.append(f"{a['bad']} of {a['scrapes']} scrapes of the atomic writer's file were wrong: {a['first_problem']}")
if a["scrapes"] < 20 or a["generations"] < 10:
    fail.append(f"too little was checked: {a['scrapes']} scrapes over {a['generations']} generations")
if t["bad"] == 0:
    fail.append(f"the check caught none of the in-place writer's torn files in {t['scrapes']} scrapes: it cannot catch them")
if fail:
    print("FAIL: " + "; ".join(fail))
    sys.exit(1)
print(f"ok: {a['scrapes']} scrapes of the atomic writer's file, {a['generations']} generations, "
      f"{a['series']} series each, none wrong; the in-place writer's torn files were caught "
      f"in {t['bad']} of {t['scrapes']} scrapes ({t['first_problem']})")
PY
