#!/usr/bin/python3
"""The database rig's table (docs/BENCHMARKS.md, part 3; issue 20).

Reads what bench/db-effect.sh recorded (OUT/settings.json and one
OUT/<arm>-<repeat>/ per run: samples.jsonl, arm.json, the consoles, and
for the arms running ksm-balloon passes.jsonl and its log) and prints, per
arm, over the measured window (after the warm-up): each busy guest's
transactions per second (the mean of its pgbench progress figures in the
window), their sum (the aggregate), the median over repeats with min and
max, its ratio to arm c (equal) and to the arm's static oracle (ge's is
oe, the sizes it was grown to); the
balloons, the memory lent, KSM's savings, the guests' page cache, the
load average and the guests' OOM kills (their consoles' "Out of memory"
and "Kernel panic" lines). Then every run on its own line, and issue 20's
gates as this rig can judge them.

--check fails (exit 1) unless every run is complete and behaved as its arm
says: every busy guest reported transactions in the window, an idle one
none; b, c, e and ge booted at the floor, the oracles within the floor
and the ceiling; in b and the oracles the balloons stayed where they
booted; ge's were at the oracle's sizes at t = 0 and stayed there; in c
and e no pass failed and ksm-balloon grew some guest. It checks no
speed: figures are printed, not asserted.

--from S prints the tables over the window from S s after t = 0 to its
end instead (and writes nothing); --bins S adds, per arm, the aggregate
over each S s of the run from t = 0 (median over repeats): how far each
arm is from its oracle as the run goes on.

Usage: db_report.py OUT [--markdown FILE] [--check] [--from S] [--bins S]
"""

import argparse
import collections
import glob
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from io_report import DEMAND_NAMES, MIB, fmt_range, load_run, mean, window_from  # noqa: E402

ARM_ORDER = ["b", "c", "oc", "e", "oe", "ge"]


def summarise(run):
    lo, hi = run["warmup_s"], run["warmup_s"] + run["measure_s"]
    tps = [r for r in run["tput"] if r["kind"] == "tps" and lo <= r["t"] <= hi]
    win_h = [h for h in run["host"] if lo <= h["t"] <= hi and h["balloon_kib"]]
    floor = run["floor_kib"]
    per_guest = {g: mean([r["tps"] for r in tps if r["guest"] == g]) for g in run["readers"]}
    lent = [sum(max(h["balloon_kib"].get(g, floor) - floor, 0) for g in run["guests"]) for h in win_h]
    profit = [max(h["ksm"].get("general_profit") or 0, 0) / 1024 for h in win_h]
    win_p = [p for p in run["passes"] if lo <= p["t"] <= hi]
    return {
        "arm": run["arm"],
        "repeat": run["repeat"],
        "per_guest_tps": per_guest,
        "samples": {g: sum(1 for r in tps if r["guest"] == g) for g in run["guests"]},
        "total_tps": sum(per_guest.values()),
        "per_guest_balloon_mib": {g: mean([h["balloon_kib"][g] for h in win_h if g in h["balloon_kib"]]) / MIB
                                  for g in run["guests"]},
        "per_guest_cached_mib": {g: mean([r["cached_kib"] for r in tps if r["guest"] == g]) / MIB
                                 for g in run["readers"]},
        "lent_mib": mean(lent) / MIB,
        "ksm_profit_mib": mean(profit) / MIB,
        "loadavg": mean([h["loadavg"] for h in win_h]),
        "window_resizes": sum(p["resized"] for p in win_p),
        "window_passes": len(win_p),
        "failed_passes": run["log"].count("pass failed"),
        "oom_kills": sum(len(v) for v in run["oom"].values()),
    }


def tables(summ, settings):
    by = collections.OrderedDict()
    for a in ARM_ORDER:
        v = sorted((s for s in summ if s["arm"] == a), key=lambda s: s["repeat"])
        if v:
            by[a] = v
    med = {a: statistics.median([s["total_tps"] for s in v]) for a, v in by.items()}
    counts = sorted({len(v) for v in by.values()})
    out = [
        f"Per arm, over the {settings['measure_s']} s after a {settings['warmup_s']} s warm-up; median over "
        f"{'/'.join(map(str, counts))} repeat(s) (min-max); {settings['guests']} guests, the first "
        f"{settings['busy']} running pgbench -S (one client), the others idle; floor {settings['floor_mib']} MiB, "
        f"ceiling {settings['ceiling_mib']} MiB, reads limited to {settings['read_iops']} a second, "
        f"pgbench scale {settings['pgbench_scale']}.",
        "",
        "| arm | aggregate tps | vs c | vs its oracle | tps per busy guest | balloon MiB per guest "
        "| page cache MiB per busy guest | lent MiB (mean) | KSM saved MiB | load avg | OOM kills |",
        "|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for a, v in by.items():
        vc = f"{med[a] / med['c']:.2f}" if "c" in med else "-"
        orc = "oe" if a == "ge" else "o" + a
        vo = f"{med[a] / med[orc]:.2f}" if orc in med else "-"
        busy = list(v[0]["per_guest_tps"])
        pg = ", ".join(fmt_range([s["per_guest_tps"][g] for s in v]) for g in busy)
        pb = ", ".join(f"{statistics.median([s['per_guest_balloon_mib'][g] for s in v]):.0f}"
                       for g in v[0]["per_guest_balloon_mib"])
        pc = ", ".join(f"{statistics.median([s['per_guest_cached_mib'][g] for s in v]):.0f}" for g in busy)
        out.append(
            f"| {DEMAND_NAMES.get(a, a)} | {fmt_range([s['total_tps'] for s in v])} | {vc} | {vo} | {pg} | {pb} | "
            f"{pc} | {fmt_range([s['lent_mib'] for s in v], 0)} | {fmt_range([s['ksm_profit_mib'] for s in v], 0)} | "
            f"{fmt_range([s['loadavg'] for s in v], 1)} | {sum(s['oom_kills'] for s in v)} |"
        )
    out += ["", "Every run:", "",
            "| arm | repeat | aggregate tps | tps per busy guest | balloon MiB per guest | resizes in the window "
            "| OOM kills |",
            "|---|---:|---:|---|---|---:|---:|"]
    for a, v in by.items():
        for s in v:
            pg = ", ".join(f"{x:.1f}" for x in s["per_guest_tps"].values())
            pb = ", ".join(f"{x:.0f}" for x in s["per_guest_balloon_mib"].values())
            rz = f"{s['window_resizes']} in {s['window_passes']} passes" if s["window_passes"] else "-"
            out.append(f"| {a} | {s['repeat']} | {s['total_tps']:.1f} | {pg} | {pb} | {rz} | {s['oom_kills']} |")

    def ratio(x, y):
        return med[x] / med[y] if x in med and y in med and med[y] else None

    out += ["", "Issue 20's gates as this rig judges them (medians over repeats):", ""]
    for what, r, ok, goal in (
        ("demand / equal aggregate", ratio("e", "c"), lambda r: r >= 1.3, ">= 1.30"),
        ("demand / its static oracle", ratio("e", "oe"), lambda r: r >= 0.95, ">= 0.95"),
        ("equal / its static oracle", ratio("c", "oc"), lambda r: r >= 0.95, ">= 0.95"),
        ("grown by the balloon to demand's oracle sizes / that oracle", ratio("ge", "oe"), lambda r: r >= 0.95,
         ">= 0.95 if booting with the memory is not what the gap is"),
        ("equal / KSM only", ratio("c", "b"), lambda r: r > 1, "> 1"),
        ("demand / KSM only", ratio("e", "b"), lambda r: r > 1, "> 1"),
    ):
        out.append(f"- {what}: not measured" if r is None
                   else f"- {what}: {r:.2f} ({goal}): **{'met' if ok(r) else 'missed'}**")
    ooms = sum(s["oom_kills"] for s in summ)
    out.append(f"- guest OOM kills in every arm: {ooms}: **{'met' if ooms == 0 else 'missed'}**")
    return "\n".join(out)


def check(runs, summ, settings):
    bad = []
    floor, ceil = settings["floor_mib"] * MIB, settings["ceiling_mib"] * MIB
    for r, s in zip(runs, summ):
        what = f"arm {r['arm']} repeat {r['repeat']}"
        for g in r["guests"]:
            n = s["samples"][g]
            if g in r["readers"] and n == 0:
                bad.append(f"{what}: busy guest {g} reported no transactions in the window")
            if g not in r["readers"] and n:
                bad.append(f"{what}: idle guest {g} ran pgbench")
        boot = [b * MIB for b in r["boot_mib_per_guest"]]
        if r["arm"] in ("b", "c", "e", "ge") and boot != [floor] * len(boot):
            bad.append(f"{what}: booted at {r['boot_mib_per_guest']} MiB, not the floor")
        if not all(floor <= b <= ceil for b in boot):
            bad.append(f"{what}: booted at {r['boot_mib_per_guest']} MiB, outside the floor and ceiling")
        win = [h for h in r["host"] if h["t"] >= 0 and h["balloon_kib"]]
        if not win:
            bad.append(f"{what}: no balloon samples")
            continue
        if r["arm"] == "ge":
            # grown before t = 0 to the oracle's sizes, and held there
            grown = [b * MIB for b in r.get("grown_mib_per_guest") or []]
            if len(grown) != len(r["guests"]) or not all(floor <= w <= ceil for w in grown):
                bad.append(f"{what}: grown to {r.get('grown_mib_per_guest')} MiB, not within the floor and ceiling")
                continue
            for g, w in zip(r["guests"], grown):
                seen = [h["balloon_kib"].get(g, 0) for h in win]
                if abs(seen[0] - w) > MIB or max(seen) > w + MIB:
                    bad.append(f"{what}: {g}'s balloon {seen[0]} KiB at t = 0, at most {max(seen)}: "
                               f"expected it grown to {w} and left there")
        elif r["arm"] in ("b", "oc", "oe"):
            for g, b in zip(r["guests"], boot):
                top = max(h["balloon_kib"].get(g, 0) for h in win)
                if top > b + MIB:
                    bad.append(f"{what}: {g}'s balloon grew to {top} KiB without ksm-balloon")
        else:
            if s["failed_passes"]:
                bad.append(f"{what}: {s['failed_passes']} ksm-balloon passes failed")
            if not r["passes"]:
                bad.append(f"{what}: no pass reports (passes.jsonl)")
            if not any(max(h["balloon_kib"].get(g, 0) for h in win) > floor + 4 * MIB for g in r["guests"]):
                bad.append(f"{what}: ksm-balloon grew no guest")
        if not s["ksm_profit_mib"] > 0:
            bad.append(f"{what}: KSM saved nothing")
    return bad


def timeline(runs, step):
    """Per arm, the aggregate tps (the busy guests' mean in each bin, summed)
    over each `step` s from t = 0, the median over repeats."""
    end = max(r["warmup_s"] + r["measure_s"] for r in runs)
    bins = [(lo, min(lo + step, end)) for lo in range(0, int(end), int(step))]
    out = ["", f"Aggregate tps over each {step:g} s from t = 0 (median over repeats):", "",
           "| arm | " + " | ".join(f"{lo:g}-{hi:g} s" for lo, hi in bins) + " |",
           "|---|" + "---:|" * len(bins)]
    for a in ARM_ORDER:
        v = [r for r in runs if r["arm"] == a]
        if not v:
            continue
        cells = []
        for lo, hi in bins:
            aggs = []
            for r in v:
                per = [[x["tps"] for x in r["tput"] if x["kind"] == "tps" and x["guest"] == g and lo <= x["t"] < hi]
                       for g in r["readers"]]
                if all(per):
                    aggs.append(sum(mean(p) for p in per))
            cells.append(f"{statistics.median(aggs):.0f}" if aggs else "-")
        out.append(f"| {DEMAND_NAMES.get(a, a)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--markdown")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--from", dest="start", type=float, metavar="S",
                    help="the tables over S s after t = 0 to the window's end (prints only)")
    ap.add_argument("--bins", type=float, metavar="S", help="add the aggregate over each S s of the run")
    args = ap.parse_args()
    with open(os.path.join(args.out, "settings.json")) as f:
        settings = json.load(f)
    runs = [load_run(os.path.dirname(p)) for p in sorted(glob.glob(os.path.join(args.out, "*/arm.json")))]
    if not runs:
        sys.exit(f"no runs under {args.out}")
    for r in runs:
        r["floor_kib"] = settings["floor_mib"] * MIB
    if args.start is not None:
        window_from(ap, args.start, settings, runs)
        args.markdown = None
        args.check = False
    if args.bins is not None and not args.bins > 0:
        ap.error("--bins: a number of seconds above 0")
    summ = [summarise(r) for r in runs]
    md = tables(summ, settings)
    if args.bins:
        md += "\n" + timeline(runs, args.bins)
    print(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    if args.start is None:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summ, f, indent=1)
    if args.check:
        bad = check(runs, summ, settings)
        for b in bad:
            print("CHECK FAILED: " + b, file=sys.stderr)
        if bad:
            sys.exit(1)
        print(f"checked: {len(runs)} runs complete, every arm behaved as it says", file=sys.stderr)


if __name__ == "__main__":
    main()
