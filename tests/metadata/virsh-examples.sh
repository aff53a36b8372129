#!/usr/bin/env bash
# Runs every `virsh metadata` example of docs/METADATA.md, in order, on a
# real libvirtd against a running persistent domain, and checks:
#  - each command succeeds;
#  - the element it leaves (live and persistent XML) validates against
#    docs/metadata.rng with xmllint, and an invalid one does not (so the
#    validation can fail);
#  - the <metadata> libvirt writes is what tests/fixtures/metadata/ holds
#    (the parser's tests in tests/metadata.rs read those files), so the
#    fixtures are libvirt's own output, not hand-written;
#  - `ksm-balloon reload` after each example (the domain recorded by
#    ksm-balloon's hook at its start) reads what the live element says: its
#    line is NN-reload.txt of the fixtures.
# UPDATE_FIXTURES=1 rewrites the fixtures instead of comparing; review the
# diff. Takes the real-stack lock (it uses libvirtd and boots one guest).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=../lib/libvirtd.sh
. "$REPO/tests/lib/libvirtd.sh"
# shellcheck source=../realstack/lib.sh
. "$REPO/tests/realstack/lib.sh"

NS=urn:ksm-balloon:metadata:1
RNG=$REPO/docs/metadata.rng
DOC=$REPO/docs/METADATA.md
FIXTURES=$REPO/tests/fixtures/metadata
VM=${RS_PREFIX}web1
for tool in virsh xmllint python3; do
    command -v "$tool" >/dev/null || kb_die "$tool is missing: run tests/deps.sh"
done
(cd "$REPO" && cargo build -q --locked --bin ksm-balloon) || kb_die "cargo build failed"
# shellcheck disable=SC2034 # rs_kb runs RS_BIN
RS_BIN=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/ksm-balloon

kb_realstack_lock
WORK=$(mktemp -d)
# reset: no domain of ours, no ksm-balloon state (nor hook spool).
reset() {
    rs_virsh destroy "$VM" >/dev/null 2>&1 || true
    rs_virsh undefine "$VM" >/dev/null 2>&1 || true
    rm -rf "$RS_STATE" "$RS_STATE.lock" "$(dirname "$RS_STATE")/spool"
}
cleanup() {
    reset
    kb_remove_hook
    rm -rf "$WORK"
}
trap cleanup EXIT
rs_build_guest || kb_die "cannot build the guest image"
mkdir -p "$RS_RUN"
# The hook records the domain at its start, so `reload` knows it.
rs_write_config
kb_install_hook "$RS_BIN" "$RS_CONFIG"
kb_libvirtd_start
reset
mkdir -p "$WORK/out"
rs_domain_xml "$VM" 256 160 virtio >"$WORK/domain.xml"
rs_virsh define "$WORK/domain.xml" >/dev/null
rs_virsh start "$VM" >/dev/null

# The examples: the `virsh metadata` lines of the ```sh blocks.
mapfile -t EXAMPLES < <(awk '/^```sh$/ { on = 1; next } /^```$/ { on = 0 } on && /^virsh metadata / { print }' "$DOC")
[ "${#EXAMPLES[@]}" -ge 4 ] || kb_die "found only ${#EXAMPLES[@]} virsh metadata examples in $DOC"

# ours XMLFILE OUT: ksm-balloon's element of a domain XML into OUT; false if none.
ours() {
    xmllint --xpath "/domain/metadata/*[namespace-uri()='$NS']" "$1" >"$2" 2>/dev/null && [ -s "$2" ]
}

# fixture XMLFILE OUT: the domain's <metadata> as libvirt wrote it, in a
# small domain with fixed name, UUID and sizes (the live sizes move).
fixture() {
    python3 - "$1" >"$2" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
m = re.search(r"\n( *<metadata>.*?</metadata>)\n", text, re.S)
meta = m.group(1) + "\n" if m else ""
print("<domain type='qemu'>\n  <name>web1</name>\n  <uuid>00000000-0000-4000-8000-000000000001</uuid>\n"
      + meta + "  <memory unit='KiB'>262144</memory>\n  <currentMemory unit='KiB'>163840</currentMemory>\n</domain>")
PY
}

export LIBVIRT_DEFAULT_URI=$KB_URI
fail=0
n=0
for ex in "${EXAMPLES[@]}"; do
    n=$((n + 1))
    id=$(printf '%02d' "$n")
    cmd=${ex/virsh metadata web1 /virsh metadata $VM }
    kb_log "example $id: $ex"
    if ! bash -c "$cmd" >"$WORK/out/$id-shown.txt" 2>"$WORK/err"; then
        kb_log "FAIL: example $id failed: $(cat "$WORK/err")"
        fail=1
        continue
    fi
    [ -s "$WORK/out/$id-shown.txt" ] || rm -f "$WORK/out/$id-shown.txt"
    for which in live config; do
        flag=; [ "$which" = config ] && flag=--inactive
        rs_virsh dumpxml $flag "$VM" >"$WORK/$which.xml"
        fixture "$WORK/$which.xml" "$WORK/out/$id-$which.xml"
        if ours "$WORK/$which.xml" "$WORK/element.xml"; then
            if ! xmllint --noout --relaxng "$RNG" "$WORK/element.xml" 2>"$WORK/err"; then
                kb_log "FAIL: example $id left an element ($which) the schema rejects: $(cat "$WORK/err")"
                fail=1
            fi
        fi
    done
    # What ksm-balloon makes of the live element (the name as in the doc).
    if rs_kb reload "$VM" >"$WORK/reload" 2>"$WORK/err"; then
        sed "s/\"$VM\"/\"web1\"/" "$WORK/reload" >"$WORK/out/$id-reload.txt"
        kb_log "  ksm-balloon reload: $(cat "$WORK/out/$id-reload.txt")"
    else
        kb_log "FAIL: ksm-balloon reload after example $id: $(cat "$WORK/err")"
        fail=1
    fi
done

# The schema can reject: a weight that is not a number.
rs_virsh metadata "$VM" --live --uri "$NS" --key ksm-balloon --set '<vm weight="two"/>'
rs_virsh dumpxml "$VM" >"$WORK/bad.xml"
ours "$WORK/bad.xml" "$WORK/element.xml" || kb_die "libvirt did not keep the invalid element"
if xmllint --noout --relaxng "$RNG" "$WORK/element.xml" 2>/dev/null; then
    kb_log "FAIL: the schema accepted weight=\"two\""
    fail=1
fi

if [ "${UPDATE_FIXTURES:-0}" = 1 ]; then
    rm -rf "$FIXTURES"
    mkdir -p "$FIXTURES"
    cp "$WORK"/out/* "$FIXTURES/"
    kb_log "fixtures rewritten in $FIXTURES: review the diff"
    [ "$fail" = 0 ] || exit 1
    exit 0
elif ! diff -ru "$FIXTURES" "$WORK/out"; then
    kb_log "FAIL: libvirt's output differs from tests/fixtures/metadata (UPDATE_FIXTURES=1 rewrites them)"
    fail=1
fi
[ "$fail" = 0 ] || exit 1
kb_log "ok: ${#EXAMPLES[@]} examples of docs/METADATA.md ran on libvirt $(virsh --version), every element they left validates, an invalid one does not, the fixtures match"
