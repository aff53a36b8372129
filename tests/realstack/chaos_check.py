#!/usr/bin/env python3
"""The chaos soak's invariants after one pass (tests/realstack/chaos.sh).

Reads the pass's JSON report, the soak's list of the guests it started
(each with the size it booted at and when), the state file and the spool,
and prints one line per finding:

    VIOLATION <kind>: <what>      an invariant broken (the soak fails)
    MISJUDGED <n>                 healthy guests named unresponsive
    UNSETTLED <n>                 guests left alone as moved by someone else
    ADOPTED <n>                   guests adopted by this pass
    LENT <kib>                    the most lent to one guest
    SUMMARY <text>                one line for the log

With --lent FILE, what the soak's passes have asked of each guest so far
(the most, by name, from every report and every state file, a killed
pass's included: the state records an ask before it is made) is kept in
FILE: a shrink that asks for more than the guest was ever given (its
floor, or the most a pass asked for it) is a violation, "unlent". (The
chaos soak's first run found that: a booting guest "recalled" to 240 MiB,
above the 144 MiB it booted at, lent nothing.) --update-only reads only
the state into FILE (after a killed pass).

Exits 1 when there is a violation. The checks read what the pass said and
left on disk, never its log.
"""

import argparse
import glob
import json
import os
import sys

# A started VM must be managed within this long (the hook's record folds at
# the next pass; a VM whose record the full spool refused is adopted once
# its QEMU is 60 s old).
MANAGED_WITHIN_SECS = 90
TOL_KIB = 1024


def load_lent(path):
    try:
        return json.load(open(path)) if path else {}
    except (OSError, ValueError):
        return {}


def save_lent(path, lent, state_path, report, prefix):
    """The most asked of each guest so far, from the report's asks and the
    state's last targets (a killed pass's included)."""
    if not path:
        return
    lent = dict(lent)
    try:
        for v in json.load(open(state_path))["vms"].values():
            if v.get("last_target_kib") is not None and v["name"].startswith(prefix):
                lent[v["name"]] = max(lent.get(v["name"], 0), v["last_target_kib"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    for v in (report or {}).get("vms", []):
        if v["action"] == "grow":
            lent[v["name"]] = max(lent.get(v["name"], 0), v["target_kib"])
    with open(path + ".tmp", "w") as f:
        json.dump(lent, f)
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--report", required=True)
    ap.add_argument("--rc", type=int, required=True)
    ap.add_argument("--secs", type=float, required=True)
    ap.add_argument("--bound", type=float, required=True)
    ap.add_argument("--guests", required=True)
    ap.add_argument("--stopped", default="")
    ap.add_argument("--state", required=True)
    ap.add_argument("--pass-boottime", type=int, required=True)
    ap.add_argument("--ceiling", type=int, required=True)
    ap.add_argument("--now", type=int, required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--lent", default="")
    ap.add_argument("--update-only", action="store_true")
    a = ap.parse_args()
    bad = []
    lent_before = load_lent(a.lent)
    if a.update_only:
        save_lent(a.lent, lent_before, a.state, None, a.prefix)
        return 0

    def violation(kind, what):
        bad.append(f"VIOLATION {kind}: {what}")

    if a.rc != 0:
        violation("pass-failed", f"the pass exited {a.rc}")
    if a.secs > a.bound:
        violation("pass-bound", f"the pass took {a.secs} s, over its bound of {a.bound} s")

    # the state file loads, and nothing was moved aside
    try:
        state = json.load(open(a.state))
        if not isinstance(state.get("vms"), dict):
            violation("state", f"{a.state} has no VM map")
    except (OSError, ValueError) as e:
        violation("state", f"{a.state} does not load: {e}")
    for f in glob.glob(a.state + ".bad-*"):
        violation("state", f"{f}: a state file was moved aside")

    # the spool drained: no record older than the pass; the quarantine empty
    spool = os.path.join(os.path.dirname(a.state), "spool")
    left = 0
    for f in os.listdir(spool) if os.path.isdir(spool) else []:
        parts = f.removesuffix(".json").split("-")
        try:
            bt = int(parts[1])
        except (IndexError, ValueError):
            violation("spool", f"{f}: not a name the hook gives")
            continue
        if bt < a.pass_boottime:
            left += 1
    if left:
        violation("spool", f"{left} record(s) older than the pass left in the spool")
    quarantine = os.path.join(os.path.dirname(a.state), "spool.quarantine")
    if os.path.isdir(quarantine) and os.listdir(quarantine):
        violation("spool", f"{len(os.listdir(quarantine))} entries in the quarantine")

    guests = json.load(open(a.guests))
    try:
        r = json.load(open(a.report))
    except (OSError, ValueError) as e:
        if a.rc == 0:
            violation("report", f"{a.report} does not load: {e}")
        for b in bad:
            print(b)
        return 1
    if r.get("state_problem"):
        violation("state", f"the pass met a state problem: {r['state_problem']}")

    vms = {v["name"]: v for v in r["vms"]}
    misjudged = unsettled = adopted = 0
    lent = 0
    for name, v in vms.items():
        if not name.startswith(a.prefix):
            continue
        if v.get("held_by_hand") or v["reason"] == "held-by-hand":
            violation("held-by-hand", f"{name} held by hand ({v.get('held_by_hand')}): no operator touched it")
        if v["reason"] == "unsettled":
            unsettled += 1
        if v["reason"] == "unresponsive" and name != a.stopped:
            misjudged += 1
        if v["adopted"]:
            adopted += 1
        if not v["managed"]:
            continue
        floor, ceil, cur = v["floor_kib"], v["ceiling_kib"], v["current_kib"]
        if ceil != a.ceiling:
            violation("ceiling", f"{name}: ceiling {ceil} KiB, its maximum is {a.ceiling}")
        if cur < floor - TOL_KIB or cur > ceil + TOL_KIB:
            violation("bounds", f"{name}: balloon {cur} KiB outside its floor {floor} and ceiling {ceil}")
        if v["action"] in ("grow", "shrink") and not floor <= v["target_kib"] <= ceil:
            violation("bounds", f"{name}: asked {v['target_kib']} KiB outside its floor {floor} and ceiling {ceil}")
        g = guests.get(name)
        if g and floor != g["boot_kib"]:
            violation("floor", f"{name}: floor {floor} KiB, it booted at {g['boot_kib']} KiB (source {v.get('source')})")
        lent = max(lent, cur - floor)
        given = max(floor, lent_before.get(name, 0))
        if a.lent and v["action"] == "shrink" and v["target_kib"] > given + TOL_KIB:
            violation("unlent", f"{name}: asked down to {v['target_kib']} KiB, above all it was ever given ({given} KiB)")
    for name, g in guests.items():
        v = vms.get(name)
        if name == a.stopped or a.now - g["started_at"] < MANAGED_WITHIN_SECS:
            continue
        if v is None:
            violation("unmanaged", f"{name}: running for {a.now - g['started_at']} s and not in the report")
        elif not v["managed"]:
            violation("unmanaged", f"{name}: running for {a.now - g['started_at']} s and not managed ({v['reason']})")
    if a.stopped and a.stopped in vms and vms[a.stopped]["managed"]:
        v = vms[a.stopped]
        if v["reason"] != "unresponsive" and v["action"] in ("grow", "shrink"):
            violation("stopped", f"{a.stopped}: its QEMU is stopped, yet the pass resized it")

    save_lent(a.lent, lent_before, a.state, r, a.prefix)
    for b in bad:
        print(b)
    print(f"MISJUDGED {misjudged}")
    print(f"UNSETTLED {unsettled}")
    print(f"ADOPTED {adopted}")
    print(f"LENT {lent}")
    ours = [v for n, v in vms.items() if n.startswith(a.prefix)]
    acts = ", ".join(
        f"{v['name'].removeprefix(a.prefix)} {v['action']} {v['current_kib'] // 1024}->{v['target_kib'] // 1024}"
        f"{'' if v['reason'] in ('', 'none') else ' (' + v['reason'] + ')'}"
        for v in ours
    )
    print(f"SUMMARY savings {r['savings_kib'] // 1024} MiB, records {r['hook_records']}, resized {r['resized']}: {acts}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
