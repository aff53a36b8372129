#!/usr/bin/env python3
"""The chaos soak's checker, checked: each invariant of chaos_check.py
broken on purpose in a made-up pass (a report, a state file, a spool), and
the checker must name it; the same pass unbroken must pass. Run by suite
37-chaos before the soak (a checker that cannot fail proves nothing).

Usage: python3 tests/realstack/chaos_check_test.py
"""

import copy
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024
NOW = 1_800_000_000
BT = 5_000_000_000_000  # the pass's CLOCK_BOOTTIME start, ns
PREFIX = "kbrs-"


def vm(name, floor, current, target, **kw):
    v = {"name": PREFIX + name, "uuid": name, "managed": True, "floor_kib": floor * MIB,
         "ceiling_kib": 256 * MIB, "current_kib": current * MIB, "target_kib": target * MIB,
         "action": "hold", "reason": "steady", "adopted": False, "source": "hook",
         "held_by_hand": None}
    v.update(kw)
    return v


GOOD = {
    "report": {"savings_kib": 0, "hook_records": 0, "resized": 0, "state_problem": None,
               "vms": [vm("c01", 160, 200, 200), vm("c02", 144, 144, 144)]},
    "guests": {PREFIX + "c01": {"boot_kib": 160 * MIB, "started_at": NOW - 300},
               PREFIX + "c02": {"boot_kib": 144 * MIB, "started_at": NOW - 300}},
    "rc": 0, "secs": 0.2, "stopped": "", "spool": [], "quarantine": [], "bad_state": False,
    "state": {"version": 1, "vms": {}},
    "lent": {PREFIX + "c01": 200 * MIB},
}


def run(case):
    with tempfile.TemporaryDirectory() as d:
        state = os.path.join(d, "state.json")
        with open(state, "w") as f:
            f.write(case["state"] if isinstance(case["state"], str) else json.dumps(case["state"]))
        os.makedirs(os.path.join(d, "spool"))
        for name in case["spool"]:
            open(os.path.join(d, "spool", name), "w").close()
        if case["quarantine"]:
            os.makedirs(os.path.join(d, "spool.quarantine"))
            for name in case["quarantine"]:
                open(os.path.join(d, "spool.quarantine", name), "w").close()
        if case["bad_state"]:
            open(state + ".bad-123", "w").close()
        report = os.path.join(d, "pass.json")
        json.dump(case["report"], open(report, "w"))
        lent = os.path.join(d, "lent.json")
        json.dump(case["lent"], open(lent, "w"))
        guests = os.path.join(d, "guests.json")
        json.dump(case["guests"], open(guests, "w"))
        p = subprocess.run(
            [sys.executable, os.path.join(HERE, "chaos_check.py"), "--report", report,
             "--rc", str(case["rc"]), "--secs", str(case["secs"]), "--bound", "35",
             "--guests", guests, "--stopped", case["stopped"], "--state", state,
             "--pass-boottime", str(BT), "--ceiling", str(256 * MIB), "--now", str(NOW),
             "--prefix", PREFIX, "--lent", lent],
            capture_output=True, text=True)
        return p.returncode, [line for line in p.stdout.splitlines() if line.startswith("VIOLATION")]


def broken(change):
    case = copy.deepcopy(GOOD)
    change(case)
    return case


def set_vm(i, **kw):
    return lambda c: c["report"]["vms"][i].update(kw)


CASES = [
    ("pass-failed", broken(lambda c: c.update(rc=1))),
    ("pass-bound", broken(lambda c: c.update(secs=36.0))),
    ("bounds", broken(set_vm(0, current_kib=150 * MIB))),
    ("bounds", broken(set_vm(0, current_kib=260 * MIB))),
    ("bounds", broken(set_vm(0, action="shrink", target_kib=150 * MIB))),
    ("ceiling", broken(set_vm(0, ceiling_kib=300 * MIB))),
    ("floor", broken(set_vm(1, floor_kib=200 * MIB, current_kib=200 * MIB, target_kib=200 * MIB))),
    ("held-by-hand", broken(set_vm(0, held_by_hand={"since": NOW, "size_kib": 200 * MIB}))),
    ("held-by-hand", broken(set_vm(1, reason="held-by-hand", action="skip"))),
    ("unmanaged", broken(set_vm(1, managed=False, reason="adopting", action="skip"))),
    ("unmanaged", broken(lambda c: c["report"]["vms"].pop(1))),
    ("state", broken(lambda c: c.update(state="{not json"))),
    ("state", broken(lambda c: c.update(bad_state=True))),
    ("state", broken(lambda c: c["report"].update(state_problem="moved aside"))),
    ("spool", broken(lambda c: c.update(spool=[f"abc-{BT - 1:020d}-42.json"]))),
    ("spool", broken(lambda c: c.update(spool=["junk"]))),
    ("spool", broken(lambda c: c.update(quarantine=["x.json"]))),
    # the chaos soak's first find: a booting guest "recalled" above its boot size
    ("unlent", broken(set_vm(1, current_kib=256 * MIB, action="shrink", target_kib=240 * MIB, reason="blind-step"))),
    ("unlent", broken(set_vm(0, current_kib=230 * MIB, action="shrink", target_kib=220 * MIB))),
    ("stopped", broken(lambda c: (c.update(stopped=PREFIX + "c01"),
                                  c["report"]["vms"][0].update(action="shrink", target_kib=180 * MIB)))),
]


def main():
    failures = 0
    rc, v = run(GOOD)
    if rc != 0 or v:
        print(f"FAIL: the unbroken pass was judged broken: {v}")
        failures += 1
    # a record newer than the pass (arrived during it) is not "left"
    rc, v = run(broken(lambda c: c.update(spool=[f"abc-{BT + 1:020d}-42.json"])))
    if rc != 0 or v:
        print(f"FAIL: a record that arrived during the pass was judged left over: {v}")
        failures += 1
    # a guest started under 90 s ago may not be managed yet
    young = broken(set_vm(1, managed=False, reason="adopting", action="skip"))
    young["guests"][PREFIX + "c02"]["started_at"] = NOW - 30
    rc, v = run(young)
    if rc != 0 or v:
        print(f"FAIL: a guest started 30 s ago was required to be managed: {v}")
        failures += 1
    for kind, case in CASES:
        rc, v = run(case)
        if rc != 1 or not any(line.startswith(f"VIOLATION {kind}:") for line in v):
            print(f"FAIL: broken {kind} not reported (exit {rc}): {v}")
            failures += 1
        else:
            print(f"ok: {kind}: {v[0]}")
    print(f"chaos_check.py: {len(CASES) + 3 - failures} of {len(CASES) + 3} cases as expected")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
