#!/usr/bin/env python3
"""What tests/systemd/suite.sh reads and judges: systemd's journal records of
ksm-balloon.service runs (structured fields, not message text) and
`ksm-balloon status --json` (the pass's own report).

Usage:
  judge.py runs SINCE_US [UNTIL_US] < journal.json
      every start of ksm-balloon.service since SINCE_US (realtime, µs; and
      before UNTIL_US) with its result; exit 1 if a run failed
  judge.py failed SINCE_US UNTIL_US < journal.json
      how many runs started in that window failed
  judge.py intervals SINCE_US MIN LO HI < journal.json
      the intervals between consecutive starts (monotonic clock); exit 1 if
      fewer than MIN intervals or their median is outside [LO, HI] seconds
  judge.py count SINCE_US < journal.json
      how many starts since SINCE_US
  judge.py overlap SINCE_US T0_US T1_US < journal.json
      a run that started since SINCE_US was in flight somewhere in
      [T0_US, T1_US] (started before T1_US, not finished before T0_US)
  judge.py floors STATUS FLOOR_KIB CEIL_KIB NAME...
      every NAME is reported exactly once with that floor and ceiling
  judge.py share STATUS TOL_KIB
      every managed VM's balloon is within TOL_KIB of its target, and the
      targets are the floors plus the report's budget split equally, capped
      at each VM's ceiling (water-filling), the budget not all zero
  judge.py median N...
      the median of the numbers
  judge.py storm WITHOUT_MS WITH_MS SLACK_MS
      sorted pairwise: the k-th fastest create with the hook took at most
      SLACK_MS more than the k-th fastest without it (comma-separated ms)
"""
import json
from fractions import Fraction
import statistics
import sys

# systemd's catalogue: a unit starting, and a job finished (JOB_RESULT set).
MSG_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"
UNIT = "ksm-balloon.service"


def journal():
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)


def runs(since_us, until_us=None):
    """[(realtime_us, monotonic_us, invocation_id, result or None, end_us or None)]
    in order."""
    out, results, ends = [], {}, {}
    for e in journal():
        # UNIT= is the field systemd itself sets on what it logs about a unit.
        if e.get("UNIT") != UNIT:
            continue
        inv = e.get("INVOCATION_ID")
        if e.get("MESSAGE_ID") == MSG_STARTING and e.get("JOB_TYPE") == "start":
            rt = int(e["__REALTIME_TIMESTAMP"])
            if rt >= since_us and (until_us is None or rt < until_us):
                out.append([rt, int(e["__MONOTONIC_TIMESTAMP"]), inv, None, None])
        elif e.get("JOB_TYPE") == "start" and e.get("JOB_RESULT") and inv:
            results[inv] = e["JOB_RESULT"]
            ends[inv] = int(e["__REALTIME_TIMESTAMP"])
    for r in out:
        r[3], r[4] = results.get(r[2]), ends.get(r[2])
    return out


def cmd_runs(since_us, until_us=None):
    rs = runs(int(since_us), None if until_us is None else int(until_us))
    bad = [r for r in rs if r[3] not in ("done", None)]
    running = [r for r in rs if r[3] is None]
    for rt, _mono, inv, res, end in rs:
        took = f"{(end - rt) / 1e3:.0f} ms" if end else "-"
        print(f"    started {rt / 1e6:.3f}, {res or 'still running'} after {took} ({inv})")
    print(f"  {len(rs)} passes started, {len(rs) - len(bad) - len(running)} done, "
          f"{len(bad)} failed, {len(running)} still running")
    return 1 if bad else 0


def cmd_failed(since_us, until_us):
    print(sum(1 for r in runs(int(since_us), int(until_us)) if r[3] not in ("done", None)))
    return 0


def cmd_intervals(since_us, minimum, lo, hi):
    rs = runs(int(since_us))
    iv = [(b[1] - a[1]) / 1e6 for a, b in zip(rs, rs[1:])]
    print("  intervals (s): " + " ".join(f"{x:.3f}" for x in iv))
    if len(iv) < int(minimum):
        print(f"  only {len(iv)} intervals, wanted {minimum}")
        return 1
    med = statistics.median(iv)
    print(f"  {len(iv)} intervals: median {med:.3f} s, min {min(iv):.3f} s, max {max(iv):.3f} s")
    return 0 if float(lo) <= med <= float(hi) else 1


def cmd_count(since_us):
    print(len(runs(int(since_us))))
    return 0


def cmd_overlap(since_us, t0, t1):
    t0, t1 = int(t0), int(t1)
    for rt, _mono, _inv, _res, end in runs(int(since_us)):
        if rt <= t1 and (end is None or end >= t0):
            took = f"{(end - rt) / 1e3:.0f} ms" if end else "still running"
            print(f"pass started {(rt - t0) / 1e3:+.0f} ms from the create's start, ran {took}")
            return 0
    print("no pass in flight during the create")
    return 1


def status(path):
    with open(path) as f:
        return json.load(f)


def cmd_floors(path, floor, ceil, *names):
    vms = status(path)["vms"]
    ok = True
    for n in names:
        hits = [v for v in vms if v["name"] == n]
        if len(hits) != 1:
            print(f"  {n}: reported {len(hits)} times")
            ok = False
            continue
        v = hits[0]
        good = v["floor_kib"] == int(floor) and v["ceiling_kib"] == int(ceil)
        ok &= good
        print(f"  {n}: floor {v['floor_kib']} KiB, ceiling {v['ceiling_kib']} KiB, "
              f"target {v['target_kib']} KiB, current {v['current_kib']} KiB, source {v['source']}"
              + ("" if good else f"  <- expected floor {floor}, ceiling {ceil}"))
    return 0 if ok else 1


def water_fill(pool, caps, weights=None):
    """The policy's water-filling (`policy::water_fill`): each VM's part of
    the pool in proportion to its weight, capped at its headroom, what a
    cap stops going to the others."""
    weights = [max(1, w) for w in (weights or [1] * len(caps))]
    out, left, weight_left = [0] * len(caps), pool, sum(weights)
    for i in sorted(range(len(caps)), key=lambda i: (Fraction(caps[i], weights[i]), i)):
        give = min(left * weights[i] // max(1, weight_left), caps[i])
        out[i] = give
        left -= give
        weight_left -= weights[i]
    return out


# `policy::DEMAND_BASE`: an idle VM's (or an unknown one's) weight under the
# demand split; a reader adds its demand to it.
DEMAND_BASE = 1000


def split_weights(st, managed):
    """Each VM's weight by the report's split: `equal` 1, `demand`
    DEMAND_BASE + its demand (an unknown counts as idle); times its
    metadata weight."""
    split = st.get("policy", {}).get("split")
    if split == "equal":
        base = [1] * len(managed)
    elif split == "demand":
        base = [DEMAND_BASE + (v.get("demand") or 0) for v in managed]
    else:
        raise SystemExit(f"judge share: split {split!r}: only equal and demand are judged here")
    return split, [b * v.get("weight", 1) for b, v in zip(base, managed)]


def cmd_share(path, tol):
    st = status(path)
    tol = int(tol)
    managed = [v for v in st["vms"] if v.get("managed", True) and v["action"] != "skip"]
    if not managed:
        print("  no managed VM")
        return 1
    split, weights = split_weights(st, managed)
    want = water_fill(st["budget_kib"], [v["ceiling_kib"] - v["floor_kib"] for v in managed], weights)
    ok = st["budget_kib"] > 0
    print(f"  savings {st['savings_kib']} KiB, budget {st['budget_kib']} KiB over {len(managed)} VMs, split {split}")
    for v, w, wt in zip(managed, want, weights):
        bonus = v["target_kib"] - v["floor_kib"]
        good = abs(bonus - w) <= 1024 and abs(v["current_kib"] - v["target_kib"]) <= tol
        ok &= good
        extra = "".join(f", {k} {v[k]} KiB" for k in ("kept_kib", "squeezed_kib") if v.get(k))
        basis = f", demand {v.get('demand')} ({v.get('demand_basis')})" if split == "demand" else ""
        print(f"  {v['name']}: bonus {bonus} KiB (its part {w} KiB, weight {wt}{basis}), balloon {v['current_kib']} KiB, "
              f"target {v['target_kib']} KiB{extra}{'' if good else '  <- not yet'}")
    return 0 if ok else 1


def cmd_median(*xs):
    print(statistics.median(float(x) for x in xs))
    return 0


def cmd_storm(without, with_hook, slack):
    a = sorted(int(x) for x in without.split(","))
    b = sorted(int(x) for x in with_hook.split(","))
    ok = len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        good = y <= x + int(slack)
        ok &= good
        print(f"  {k + 1}. fastest: {x} ms without the hook, {y} ms with it ({y - x:+d} ms)"
              + ("" if good else f"  <- more than {slack} ms slower"))
    return 0 if ok else 1


COMMANDS = {
    "runs": cmd_runs, "failed": cmd_failed, "intervals": cmd_intervals, "count": cmd_count, "overlap": cmd_overlap,
    "floors": cmd_floors, "share": cmd_share, "median": cmd_median, "storm": cmd_storm,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]))
