#!/usr/bin/python3
"""The seccomp part of ksm-balloon.service's sandbox, built from the unit file
itself, for tests on machines where systemd is not PID 1.

    unit_sandbox.py exec UNIT -- COMMAND...
        Loads seccomp filters equivalent to the unit's SystemCallFilter= (with
        SystemCallErrorNumber=), MemoryDenyWriteExecute= and
        RestrictAddressFamilies= settings, the way systemd builds them (one
        filter per setting, stacked), then execs COMMAND under them.
    unit_sandbox.py check-trace UNIT TRACE STATEDIR BINARY
        Reads an `strace -f -y` record of a run and reports what BINARY did
        (from its execve on): every syscall, those the unit's filter refuses,
        socket families, writable+executable mappings, files written outside
        STATEDIR, devices opened. Exits 1 on a write outside STATEDIR, a
        device beyond PrivateDevices' set, or a socket family the unit does
        not allow and the program did not survive being refused.

Syscall groups (@system-service, ...) are expanded by `systemd-analyze
syscall-filter` of the systemd installed here, so the sets are systemd's own.
Uses Debian's python3-seccomp (libseccomp), hence /usr/bin/python3.
"""

import errno
import os
import re
import socket
import subprocess
import sys


def unit_settings(path):
    """The [Service] section's KEY=VALUE lines, in order."""
    out, section = [], None
    for raw in open(path):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            k, v = line.split("=", 1)
            out.append((k.strip(), v.strip()))
    return out


def syscall_groups():
    text = subprocess.run(["systemd-analyze", "syscall-filter"], check=True,
                          capture_output=True, text=True).stdout
    groups, cur = {}, None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not line[0].isspace() and s.startswith("@"):
            cur = s
            groups[cur] = []
        elif cur:
            groups[cur].append(s)
    return groups


def expand(groups, name, seen=()):
    if not name.startswith("@"):
        return {name}
    out = set()
    for m in groups[name]:
        if m not in seen:
            out |= expand(groups, m, seen + (name,))
    return out


def allowed_syscalls(settings, groups):
    """The allow list SystemCallFilter= lines build, processed in order as
    systemd does: the first line being an allow list starts from @default;
    plain entries add, ~ entries remove."""
    allowed = None
    for k, v in settings:
        if k != "SystemCallFilter":
            continue
        invert = v.startswith("~")
        names = v.lstrip("~").split()
        if allowed is None:
            if invert:
                sys.exit("unit_sandbox: a deny-list-first SystemCallFilter= is not supported")
            allowed = expand(groups, "@default")
        for n in names:
            if invert:
                allowed -= expand(groups, n)
            else:
                allowed |= expand(groups, n)
    return allowed


def setting(settings, key, default=None):
    vals = [v for k, v in settings if k == key]
    return vals[-1] if vals else default


def load_filters(settings, groups):
    """Loads the filters; the syscall allow list last, as systemd does, since
    loading a filter is itself a syscall the allow list may refuse."""
    import seccomp  # Debian's python3-seccomp

    if setting(settings, "MemoryDenyWriteExecute", "no") in ("yes", "true", "1"):
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        wx = 0x2 | 0x4  # PROT_WRITE | PROT_EXEC
        f.add_rule(seccomp.ERRNO(errno.EPERM), "mmap", seccomp.Arg(2, seccomp.MASKED_EQ, wx, wx))
        for name in ("mprotect", "pkey_mprotect"):
            f.add_rule(seccomp.ERRNO(errno.EPERM), name, seccomp.Arg(2, seccomp.MASKED_EQ, 0x4, 0x4))
        f.add_rule(seccomp.ERRNO(errno.EPERM), "shmat", seccomp.Arg(2, seccomp.MASKED_EQ, 0o100000, 0o100000))
        f.load()
    fams = setting(settings, "RestrictAddressFamilies")
    if fams:
        if fams.startswith("~"):
            sys.exit("unit_sandbox: a deny-list RestrictAddressFamilies= is not supported")
        keep = [getattr(socket, n) for n in fams.split()]
        if len(keep) != 1:
            sys.exit("unit_sandbox: only a single-family RestrictAddressFamilies= is supported")
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        f.add_rule(seccomp.ERRNO(errno.EAFNOSUPPORT), "socket", seccomp.Arg(0, seccomp.NE, keep[0]))
        f.load()
    allowed = allowed_syscalls(settings, groups)
    if allowed is not None:
        err = setting(settings, "SystemCallErrorNumber")
        deny = seccomp.ERRNO(getattr(errno, err)) if err else seccomp.KILL_PROCESS
        f = seccomp.SyscallFilter(deny)
        for name in sorted(allowed):
            try:
                f.add_rule(seccomp.ALLOW, name)
            except RuntimeError:
                pass  # not a syscall of this architecture (riscv_hwprobe, ...): systemd skips it too
        f.load()


def check_trace(settings, groups, trace, statedir, binary):
    allowed = allowed_syscalls(settings, groups)
    fams_setting = (setting(settings, "RestrictAddressFamilies") or "").split()
    lines = open(trace).read().splitlines()
    start = next((i for i, l in enumerate(lines)
                  if re.search(r'execve\("' + re.escape(binary) + r'"', l) and "= 0" in l), None)
    if start is None:
        sys.exit(f"check-trace: no execve of {binary} in {trace}")
    lines = lines[start + 1:]
    call = re.compile(r"^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)\(")
    used, refused, families, wx, written, devs = set(), {}, set(), [], set(), set()
    statedir = statedir.rstrip("/")
    for l in lines:
        m = call.match(l)
        if not m:
            continue
        name = m.group(1)
        used.add(name)
        if allowed is not None and name not in allowed:
            refused.setdefault(name, l)
        if name == "socket":
            fam = re.search(r"\((AF_[A-Z0-9]+|PF_[A-Z0-9]+|\d+)", l)
            families.add(fam.group(1) if fam else "?")
        if name in ("mmap", "mprotect", "pkey_mprotect") and "PROT_EXEC" in l and (
                name != "mmap" or "PROT_WRITE" in l):
            wx.append(l)
        dirs = re.findall(r"\d+<([^>]*)>", l)
        strs = re.findall(r'"((?:[^"\\]|\\.)*)"', l)
        if name in ("open", "openat", "openat2", "creat") and strs:
            p = strs[0]
            if not p.startswith("/") and dirs:
                p = dirs[0].rstrip("/") + "/" + p
            if p.startswith("/dev/"):
                devs.add(p)
            if (name == "creat" or re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", l)) and p != "/dev/null":
                written.add(p)
        elif name in ("mkdir", "mkdirat", "rename", "renameat", "renameat2", "unlink", "unlinkat",
                      "rmdir", "link", "linkat", "symlink", "symlinkat"):
            for i, p in enumerate(strs):
                if not p.startswith("/") and dirs:
                    p = dirs[min(i, len(dirs) - 1)].rstrip("/") + "/" + p
                written.add(p)

    print(f"strace of {os.path.basename(binary)}: {len(used)} distinct syscalls:", " ".join(sorted(used)))
    print(f"  socket families: {sorted(families)}; devices opened: {sorted(devs) or 'none'}")
    print(f"  files written: {sorted(written)}")
    for name, l in sorted(refused.items()):
        print(f"  refused by the unit's SystemCallFilter (EPERM), survived: {l[:160]}")
    for l in wx:
        print(f"  refused by MemoryDenyWriteExecute (EPERM), survived: {l[:160]}")
    problems = []
    outside = sorted(p for p in written if not (p == statedir or p.startswith(statedir + "/")))
    if outside:
        problems.append(f"written outside the state directory {statedir}: {outside}")
    extra = devs - {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
    if extra:
        problems.append(f"devices beyond PrivateDevices' set: {sorted(extra)}")
    bad_fams = {f for f in families if f.replace("PF_", "AF_") not in fams_setting + ["AF_LOCAL"]}
    if fams_setting and bad_fams:
        print(f"  refused by RestrictAddressFamilies (EAFNOSUPPORT), survived: {sorted(bad_fams)}")
    for p in problems:
        print("FAIL: " + p)
    return 1 if problems else 0


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "exec" and sys.argv[3] == "--":
        settings = unit_settings(sys.argv[2])
        load_filters(settings, syscall_groups())
        os.execvp(sys.argv[4], sys.argv[4:])
    if len(sys.argv) == 6 and sys.argv[1] == "check-trace":
        settings = unit_settings(sys.argv[2])
        sys.exit(check_trace(settings, syscall_groups(), sys.argv[3], sys.argv[4], sys.argv[5]))
    sys.exit(__doc__)


if __name__ == "__main__":
    main()
