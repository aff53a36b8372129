#!/usr/bin/env bash
# The SELinux half of the packaging (issue 22): ksm-balloon's policy module
# (packaging/selinux/ksm-balloon.{te,fc,if}) and the ksm-balloon-selinux RPM
# that installs it, checked with Debian's SELinux tools (selinux-policy-dev,
# checkpolicy, semodule-utils, policycoreutils; tests/deps.sh installs them).
#   1. the module compiles with the policy's devel Makefile (Debian's: the
#      reference policy's headers, where virtqemud_t does not exist);
#   2. the compiled module, turned back into CIL (policycoreutils' pp), holds
#      what docs/RELIABILITY.md says: the type (a file type, so the pass's
#      unconfined_service_t may use it), the rules for virtd_t and for
#      virtqemud_t each in an optional block of its own, nothing that lets a
#      daemon write /var/lib itself, and one file context, which labels the
#      state directory, the spool and everything in them and nothing beside;
#   3. the RPM's module is the one compiled here (same CIL); the RPM lists
#      tests/packaging/expected-files-selinux.txt, requires what Fedora's
#      guidelines ask, the main RPM pulls it in where the targeted policy
#      is installed, and rpmlint says nothing beyond rpmlint.toml;
#   4. its scriptlets, run by /bin/sh with stand-ins for semodule,
#      selinuxenabled, load_policy and fixfiles, a fake /etc/selinux and
#      /var/lib (tmpfs in a private mount namespace): the module installed
#      at priority 200 (the policy reloaded only where SELinux runs), the
#      file contexts saved before and relabelled after, the module removed
#      on erase, left alone on upgrade;
#   5. `make dist`'s tarball carries the module's sources.
# Not checked here (no SELinux-enforcing kernel on these machines): the
# module loaded into Fedora's targeted policy, and a hook writing the spool
# under enforcing mode (no AVC test).
#
# Usage: tests/packaging/selinux.sh REPO WORKDIR
# (WORKDIR as tests/packaging/build-rpm.sh left it: rpm-path,
# rpm-selinux-path and the clone with its dist/.)
set -euo pipefail
repo=$(realpath "$1")
top=$2
work=$top/selinux
here=$repo/tests/packaging
rm -rf "$work"
mkdir -p "$work/build" "$work/rpm"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# --- 1. compile --------------------------------------------------------------
devel=/usr/share/selinux/devel/Makefile
[ -f "$devel" ] || { echo "$devel is missing: run tests/deps.sh (selinux-policy-dev)"; exit 1; }
cp "$repo"/packaging/selinux/ksm-balloon.{te,fc,if} "$work/build/"
t0=$(date +%s%N)
if ! make -C "$work/build" -f "$devel" NAME=targeted ksm-balloon.pp >"$work/make.log" 2>&1; then
    cat "$work/make.log"
    echo "FAIL: the module does not compile"
    exit 1
fi
echo "compiled packaging/selinux/ksm-balloon.te with $devel ($(dpkg-query -W -f='selinux-policy-dev ${Version}' selinux-policy-dev), checkmodule $(checkmodule -V)): $(( ($(date +%s%N) - t0) / 1000000 )) ms, $(stat -c %s "$work/build/ksm-balloon.pp") bytes"

# --- 2. what the compiled module holds ---------------------------------------
pp=/usr/libexec/selinux/hll/pp
"$pp" "$work/build/ksm-balloon.pp" "$work/module.cil" 2>/dev/null
semodule_unpackage "$work/build/ksm-balloon.pp" "$work/module.mod" "$work/module.fc"
python3 - "$work/module.cil" "$work/module.fc" "$repo/Makefile" <<'PY' || fails=$((fails + 1))
import re, sys
cil, fc, makefile = (open(p).read() for p in sys.argv[1:4])
bad = []
def check(ok, what):
    print(("ok: " if ok else "FAIL: ") + what)
    if not ok:
        bad.append(what)

# Split the CIL into top-level statements, and the optional blocks into theirs.
def sexprs(text):
    out, depth, start = [], 0, None
    for i, c in enumerate(text):
        if c == "(":
            if depth == 0:
                start = i
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                out.append(text[start:i + 1])
    return out
top = sexprs(cil)
optionals = [s for s in top if s.startswith("(optional ")]
plain = [s for s in top if not s.startswith("(optional ")]
def rules(block):
    return re.findall(r"\(allow (\S+) (\S+) \((\w+) \(([^)]*)\)\)\)", block)
def perms(block, src, tgt, cls):
    return {p for s, t, c, ps in rules(block) if (s, t, c) == (src, tgt, cls) for p in ps.split()}

check("(type ksm_balloon_var_lib_t)" in plain, "declares ksm_balloon_var_lib_t")
check(any(re.fullmatch(r"\(typeattributeset file_type \([^)]*\bksm_balloon_var_lib_t\b[^)]*\)\)", s) for s in plain),
      "ksm_balloon_var_lib_t is a file_type (unconfined_service_t, the pass, may use it)")
check(not any(rules(s) for s in plain), "no allow rule outside an optional block")

# What the hook does, in either daemon's domain: stat and create the spool
# directory if missing, list it, create a temporary file in the state
# directory, write it, rename it into spool/, remove it on failure.
need_dir = {"search", "getattr", "read", "open", "write", "add_name", "remove_name", "create"}
need_file = {"create", "open", "write", "getattr", "rename", "unlink"}
for dom, other in (("virtd_t", "virtqemud_t"), ("virtqemud_t", "virtd_t")):
    mine = [b for b in optionals if re.search(r"\(typeattributeset cil_gen_require %s\)" % dom, b)]
    check(len(mine) == 1, f"one optional block requires {dom}")
    if len(mine) != 1:
        continue
    b = mine[0]
    check(other not in b, f"the {dom} block does not name {other} (each daemon's rules load where it exists)")
    d = perms(b, dom, "ksm_balloon_var_lib_t", "dir")
    f = perms(b, dom, "ksm_balloon_var_lib_t", "file")
    check(need_dir <= d, f"{dom} may {' '.join(sorted(need_dir))} ksm_balloon_var_lib_t dirs (missing: {' '.join(sorted(need_dir - d)) or 'none'})")
    check(need_file <= f, f"{dom} may {' '.join(sorted(need_file))} ksm_balloon_var_lib_t files (missing: {' '.join(sorted(need_file - f)) or 'none'})")
    check("search" in perms(b, dom, "var_lib_t", "dir"), f"{dom} may search /var/lib (var_lib_t)")
    wide = perms(b, dom, "var_lib_t", "dir") & {"write", "add_name", "remove_name"}
    check(not wide, f"{dom} may not write /var/lib itself (granted: {' '.join(sorted(wide)) or 'nothing'})")
    others = {t for s, t, c, ps in rules(b)} - {"var_t", "var_lib_t", "ksm_balloon_var_lib_t"}
    check(not others, f"{dom} gets nothing on other types ({' '.join(sorted(others)) or 'none'})")
check(len(optionals) == 2, f"two optional blocks, no others ({len(optionals)})")

# The file contexts: in the CIL (one filecon) and in the package's .fc.
filecons = re.findall(r'\(filecon "([^"]*)" (\w+) \(system_u object_r (\w+) ', cil)
check(filecons == [("/var/lib/ksm-balloon(/.*)?", "any", "ksm_balloon_var_lib_t")],
      f"one file context: /var/lib/ksm-balloon(/.*)? -> ksm_balloon_var_lib_t ({filecons})")
entries = [l.split() for l in fc.splitlines() if l.strip() and not l.lstrip().startswith("#")]
check(entries == [["/var/lib/ksm-balloon(/.*)?", "system_u:object_r:ksm_balloon_var_lib_t:s0"]],
      f"the package's .fc holds that one entry ({entries})")
statedir = re.search(r"^STATEDIR := (\S+)$", makefile, re.M)
check(statedir is not None and statedir.group(1) == "/var/lib/$(NAME)",
      "the Makefile's STATEDIR is /var/lib/ksm-balloon, the path labelled")
# File contexts are matched whole (anchored), as libselinux does.
regex = re.compile(filecons[0][0]) if filecons else None
for path, want in [("/var/lib/ksm-balloon", True), ("/var/lib/ksm-balloon/state.json", True),
                   ("/var/lib/ksm-balloon/state.json.lock", True),
                   ("/var/lib/ksm-balloon/.spool-00000000000000000001-1.json.tmp", True),
                   ("/var/lib/ksm-balloon/spool", True), ("/var/lib/ksm-balloon/spool/00000000000000000001-1.json", True),
                   ("/var/lib/ksm-balloon/spool.quarantine/x", True),
                   ("/var/lib/ksm-balloon2", False), ("/var/lib/ksm-balloon.old/state.json", False),
                   ("/var/lib/libvirt", False), ("/var/lib", False)]:
    got = bool(regex and regex.fullmatch(path))
    check(got == want, f"{path} {'is' if want else 'is not'} labelled ksm_balloon_var_lib_t")
sys.exit(1 if bad else 0)
PY

# --- 3. the RPMs --------------------------------------------------------------
srpm=$(cat "$top/rpm-selinux-path")
mrpm=$(cat "$top/rpm-path")
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
(cd "$work/rpm" && rpm2cpio "$srpm" | cpio -id --quiet)
shipped=$work/rpm/usr/share/selinux/packages/targeted/ksm-balloon.pp.bz2
if [ -f "$shipped" ]; then
    bunzip2 -c "$shipped" >"$work/shipped.pp"
    "$pp" "$work/shipped.pp" "$work/shipped.cil" 2>/dev/null
    if cmp -s "$work/module.cil" "$work/shipped.cil"; then
        echo "ok: the RPM's ksm-balloon.pp.bz2 is the module compiled here (same CIL, $(wc -l <"$work/shipped.cil") lines)"
    else
        fail "the RPM's module differs from the one compiled here:"
        diff "$work/module.cil" "$work/shipped.cil" | head -n 20
    fi
else
    fail "the RPM has no ${shipped#"$work/rpm"}"
fi
cmp -s "$work/rpm/usr/share/selinux/devel/include/distributed/ksm-balloon.if" "$repo/packaging/selinux/ksm-balloon.if" ||
    fail "the RPM's ksm-balloon.if is not packaging/selinux/ksm-balloon.if"

rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$srpm" |
    sed 's/^\([^ ]* [^ ]* [^ ]*\)  /\1 - /' >"$work/got-files"
grep -v '^#' "$here/expected-files-selinux.txt" | sed "s/@VERSION@/$version/g" >"$work/expected-files"
if diff -u "$work/expected-files" "$work/got-files"; then
    echo "ok: rpm -qlp lists tests/packaging/expected-files-selinux.txt ($(wc -l <"$work/got-files") entries)"
else
    fail "rpm -qlp of the -selinux RPM differs from tests/packaging/expected-files-selinux.txt (- expected, + got)"
fi
[ "$(rpm -qp --qf '%{ARCH}' "$srpm")" = noarch ] || fail "the -selinux RPM is not noarch"
rpm -qp --requires "$srpm" >"$work/requires"
for r in selinux-policy-targeted policycoreutils libselinux-utils; do
    grep -qx "$r" "$work/requires" || fail "the -selinux RPM does not require $r"
done
# Requires(post): the policy is in place before %post installs the module.
rpm -qp --qf '[%{REQUIREFLAGS:deptype} %{REQUIRENAME}\n]' "$srpm" | grep -qx 'post selinux-policy-targeted' ||
    fail "the -selinux RPM has no Requires(post): selinux-policy-targeted"
rpm -qp --requires "$mrpm" | grep -qx '(ksm-balloon-selinux if selinux-policy-targeted)' ||
    fail "ksm-balloon does not require (ksm-balloon-selinux if selinux-policy-targeted)"
echo "ok: Requires checked: -selinux needs selinux-policy-targeted (post), policycoreutils, libselinux-utils; ksm-balloon pulls it in with the targeted policy"
out=$(rpmlint -c "$here/rpmlint.toml" "$srpm" 2>&1) || true  # exits non-zero on findings: judged below
if grep -q ': [EW]: ' <<<"$out"; then
    sed 's/^/    /' <<<"$out"
    fail "rpmlint reported the findings above on the -selinux RPM (allowed: tests/packaging/rpmlint.toml)"
else
    echo "ok: rpmlint $(rpmlint --version) on $(basename "$srpm"): nothing beyond the allow-list"
fi

# --- 4. the scriptlets --------------------------------------------------------
sdir=$work/scriptlets
mkdir -p "$sdir/bin"
rpm -qp --scripts "$srpm" >"$sdir/scripts.txt"
python3 - "$sdir/scripts.txt" "$sdir" <<'PY' || fails=$((fails + 1))
import re, sys
text, out = open(sys.argv[1]).read(), sys.argv[2]
parts = re.split(r"^(\w+) scriptlet \(using ([^)]+)\):\n", text, flags=re.M)
found = set()
for i in range(1, len(parts), 3):
    name, interp, body = parts[i], parts[i + 1], parts[i + 2]
    assert interp == "/bin/sh", f"{name} uses {interp}"
    open(f"{out}/{name}.sh", "w").write(body)
    found.add(name)
want = {"preinstall", "postinstall", "postuninstall", "posttrans"}
assert found == want, f"scriptlets {sorted(found)}, expected {sorted(want)}"
PY
# Stand-ins: each records its call; selinuxenabled answers $SELINUX_ENABLED.
for c in semodule load_policy fixfiles; do
    # shellcheck disable=SC2016 # expanded by the stand-in
    printf '#!/bin/sh\necho "%s${*:+ $*}" >>"$CALLS"\n' "$c" >"$sdir/bin/$c"
done
# shellcheck disable=SC2016 # expanded by the stand-in
printf '#!/bin/sh\n[ "$SELINUX_ENABLED" = yes ]\n' >"$sdir/bin/selinuxenabled"
chmod +x "$sdir/bin/"*
# run SCRIPTLET ARG ENABLED EXPECTED...: runs the scriptlet with $1=ARG in a
# private mount namespace (tmpfs over /etc/selinux, holding a config naming
# the targeted policy and its file_contexts, and over /var/lib), then
# compares the stand-ins' calls, and the files in /var/lib/rpm-state, with
# EXPECTED (one a line; "state: LIST" for the files). KEEP_PRE=1: a saved
# file_contexts.pre is there before the scriptlet runs.
run() {
    local script=$1 arg=$2 enabled=$3 got want
    shift 3
    : >"$sdir/calls"
    # shellcheck disable=SC2016 # expanded by the inner sh, from its arguments
    if ! unshare --mount --propagation private -- sh -c '
        mount -t tmpfs tmpfs /etc/selinux && mount -t tmpfs tmpfs /var/lib || exit 9
        mkdir -p /etc/selinux/targeted/contexts/files
        printf "SELINUX=enforcing\nSELINUXTYPE=targeted\n" >/etc/selinux/config
        echo "/var/lib(/.*)? system_u:object_r:var_lib_t:s0" >/etc/selinux/targeted/contexts/files/file_contexts
        if [ "$6" = 1 ]; then mkdir -p /var/lib/rpm-state && echo saved >/var/lib/rpm-state/file_contexts.pre; fi
        env PATH="$1:/usr/bin:/bin" CALLS="$2" SELINUX_ENABLED="$3" sh "$4" "$5" || exit $?
        echo "state: $(cd /var/lib && find . -type f | sort | tr "\n" " ")" >>"$2"
    ' sh "$sdir/bin" "$sdir/calls" "$enabled" "$sdir/$script.sh" "$arg" "${KEEP_PRE:-0}"; then
        fail "%$script \$1=$arg (SELinux enabled: $enabled) exited non-zero"
        return
    fi
    got=$(cat "$sdir/calls")
    want=$(printf '%s\n' "$@")
    if [ "$got" = "$want" ]; then
        echo "ok: %$script \$1=$arg (SELinux enabled: $enabled): $(tr '\n' ';' <<<"$want")"
    else
        fail "%$script \$1=$arg (SELinux enabled: $enabled) did:"
        sed 's/^/    /' <<<"$got"
        echo "  expected:"
        sed 's/^/    /' <<<"$want"
    fi
}
pre=./rpm-state/file_contexts.pre
module=/usr/share/selinux/packages/targeted/ksm-balloon.pp.bz2
# Install, SELinux running: file contexts saved, module installed and the
# policy reloaded, then the paths whose context changed relabelled.
run preinstall 1 yes "state: $pre "
run postinstall 1 yes "semodule -n -s targeted -X 200 -i $module" "load_policy" "state: "
KEEP_PRE=1 run posttrans 1 yes "fixfiles -C /var/lib/rpm-state/file_contexts.pre restore" "state: "
# Install with SELinux off (a host booted with selinux=0): the module goes
# into the store for the next boot; nothing is reloaded or relabelled.
run preinstall 1 no "state: "
run postinstall 1 no "semodule -n -s targeted -X 200 -i $module" "state: "
run posttrans 1 no "state: "
# Upgrade: the old package's %postun leaves the module alone (the new one's
# %post has just installed its own).
run postuninstall 1 yes "state: "
# Erase: the contexts saved, the module removed, the policy reloaded, and
# the state directory (kept by RPM when it holds a state) relabelled back.
run postuninstall 0 yes "semodule -n -s targeted -X 200 -r ksm-balloon" "load_policy" \
    "fixfiles -C /var/lib/rpm-state/file_contexts.pre restore" "state: "
run postuninstall 0 no "semodule -n -s targeted -X 200 -r ksm-balloon" "state: "

# --- 5. make dist -------------------------------------------------------------
tarball=$(find "$top/clone/dist" -maxdepth 1 -name 'ksm-balloon-*.tar.gz' | head -n 1)
if [ -n "$tarball" ]; then
    tar -tzf "$tarball" >"$work/tarball-files"
    missing=0
    for f in ksm-balloon.te ksm-balloon.fc ksm-balloon.if; do
        grep -qx "ksm-balloon-$version/packaging/selinux/$f" "$work/tarball-files" ||
            { fail "$(basename "$tarball") has no packaging/selinux/$f"; missing=1; }
    done
    [ "$missing" -eq 1 ] || echo "ok: $(basename "$tarball") carries packaging/selinux/ksm-balloon.{te,fc,if}"
else
    fail "no source tarball in $top/clone/dist"
fi

[ "$fails" -eq 0 ] || { echo "$fails SELinux check(s) failed"; exit 1; }
echo "all SELinux checks passed"
