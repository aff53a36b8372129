#!/usr/bin/python3
"""The KSM governor benchmark's report (bench/ksm-governor.sh; issue 21).

Reads each run's samples.jsonl (bench/io_sample.py), passes.jsonl (the
ksm-balloon reports) and arm.json under DIR, and prints per arm, as the
median over the repeats with the range in parentheses (io_report's
fmt_range):

  t90        seconds from t = 0 (every guest booted, its balloon at its boot
             size) to the first sample whose savings reach 90 % of the
             steady savings (none: never)
  steady     the steady savings, MiB: KSM's general_profit, the mean over the
             quiet phase
  cpu merge, cpu quiet, cpu churn, cpu run
             ksmd's CPU, % of one core, over each phase and the whole run
             (from t = 0), from its /proc stat
  lent       the MiB lent: the guests' balloons above their floor, summed,
             the mean over the run
  MB/s       the guests' throughput in the churn phase, summed (each guest's
             mean)
  pts        pages_to_scan at the end of each phase (merge/quiet/churn), the
             last repeat's

then issue 21's goals for the manage arm, met or not, with their figures.

Usage: ksm_governor_report.py DIR [--markdown FILE]
"""

import argparse
import glob
import gzip
import json
import math
import os
import statistics

from io_report import fmt_range

MIB = 1024


def load_jsonl(path):
    """The JSON lines of `path`, or of `path`.gz (the committed results)."""
    out = []
    if os.path.exists(path):
        f = open(path)
    elif os.path.exists(path + ".gz"):
        f = gzip.open(path + ".gz", "rt")
    else:
        return out
    with f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def cpu_pct(hosts, lo, hi):
    pts = [(h["t"], h["ksmd_cpu_s"]) for h in hosts
           if lo <= h["t"] <= hi and h.get("ksmd_cpu_s") is not None]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return math.nan
    return 100 * (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def savings_mib(h):
    p = h["ksm"].get("general_profit")
    return None if p is None else p / 1048576


def run_figures(d):
    arm = json.load(open(os.path.join(d, "arm.json")))
    samples = load_jsonl(os.path.join(d, "samples.jsonl"))
    t0 = arm["t_ready"]
    m, q, c = arm["merge_s"], arm["quiet_s"], arm["churn_s"]
    hosts = [dict(h, t=h["t"] - t0) for h in samples if h["kind"] == "host"]
    tputs = [dict(s, t=s["t"] - t0) for s in samples if s["kind"] == "tput"]
    hosts = [h for h in hosts if h["t"] >= 0]
    quiet = [savings_mib(h) for h in hosts if m <= h["t"] <= m + q and savings_mib(h) is not None]
    steady = statistics.mean(quiet) if quiet else math.nan
    t90 = next((h["t"] for h in hosts
                if savings_mib(h) is not None and not math.isnan(steady) and steady > 0
                and savings_mib(h) >= 0.9 * steady), math.nan)
    floor_kib = arm["floor_mib"] * MIB
    lent = [sum(max(0, k - floor_kib) for k in h["balloon_kib"].values()) / MIB
            for h in hosts if h.get("balloon_kib")]
    churn = [s for s in tputs if m + q <= s["t"] <= m + q + c]
    per_guest = {}
    for s in churn:
        per_guest.setdefault(s["guest"], []).append(s["mbps"])
    mbps = sum(statistics.mean(v) for v in per_guest.values()) if per_guest else math.nan

    def pts_at(t):
        before = [h for h in hosts if h["t"] <= t]
        return before[-1]["ksm"].get("pages_to_scan") if before else None

    return {
        "arm": arm["arm"], "repeat": arm["repeat"], "t90": t90, "steady": steady,
        "cpu_merge": cpu_pct(hosts, 0, m), "cpu_quiet": cpu_pct(hosts, m, m + q),
        "cpu_churn": cpu_pct(hosts, m + q, m + q + c), "cpu_run": cpu_pct(hosts, 0, m + q + c),
        "lent": statistics.mean(lent) if lent else math.nan, "mbps": mbps,
        "pts": (pts_at(m), pts_at(m + q), pts_at(m + q + c)),
        "passes": len(load_jsonl(os.path.join(d, "passes.jsonl"))),
        "run_s": arm["run_s"],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    runs = [run_figures(os.path.dirname(a)) for a in sorted(glob.glob(os.path.join(args.dir, "*/arm.json")))]
    settings = os.path.join(args.dir, "settings.json")
    order = json.load(open(settings))["arms"].split(",") if os.path.exists(settings) else []
    order = [a for a in order if any(r["arm"] == a for r in runs)]
    for r in runs:
        if r["arm"] not in order:
            order.append(r["arm"])
    by = {a: [r for r in runs if r["arm"] == a] for a in order}
    lines = [
        "| arm | runs | t90 s | steady MiB | ksmd CPU % merge | quiet | churn | whole run | lent MiB | churn MB/s | pages_to_scan (merge/quiet/churn end, last run) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for a, rs in by.items():
        lines.append(
            f"| {a} | {len(rs)} | {fmt_range([r['t90'] for r in rs], 0)} | {fmt_range([r['steady'] for r in rs])} | "
            f"{fmt_range([r['cpu_merge'] for r in rs])} | {fmt_range([r['cpu_quiet'] for r in rs])} | "
            f"{fmt_range([r['cpu_churn'] for r in rs])} | {fmt_range([r['cpu_run'] for r in rs])} | "
            f"{fmt_range([r['lent'] for r in rs])} | {fmt_range([r['mbps'] for r in rs])} | "
            f"{'/'.join(str(x) for x in rs[-1]['pts'])} |")
    goals = []  # on the means over the repeats

    def m(a, k):
        xs = [r[k] for r in by.get(a, []) if not math.isnan(r[k])]
        return statistics.mean(xs) if xs else math.nan

    if "manage" in by and "fast" in by:
        s, f = m("manage", "steady"), m("fast", "steady")
        goals.append(("manage's steady savings >= 95 % of fast's", f"{s:.1f} / {f:.1f} MiB = {s / f:.2f}" if f else "-",
                      "met" if f and s >= 0.95 * f else "missed"))
        c, cf = m("manage", "cpu_run"), m("fast", "cpu_run")
        goals.append(("manage's ksmd CPU over the run <= 50 % of fast's", f"{c:.1f} / {cf:.1f} % = {c / cf:.2f}" if cf else "-",
                      "met" if cf and c <= 0.5 * cf else "missed"))
    if "manage" in by and "default" in by:
        c, cd = m("manage", "cpu_quiet"), m("default", "cpu_quiet")
        goals.append(("manage's ksmd CPU in the quiet phase near default's (within 1 point of a core)",
                      f"{c:.1f} vs {cd:.1f} %", "met" if c <= cd + 1 else "missed"))
    if "manage" in by and "ksmtuned" in by:
        s, st = m("manage", "steady"), m("ksmtuned", "steady")
        c, ct = m("manage", "cpu_run"), m("ksmtuned", "cpu_run")
        goals.append(("manage's steady savings >= ksmtuned's", f"{s:.1f} vs {st:.1f} MiB", "met" if s >= st else "missed"))
        goals.append(("manage's ksmd CPU over the run <= ksmtuned's", f"{c:.1f} vs {ct:.1f} %", "met" if c <= ct else "missed"))
    if goals:
        lines += ["", "| goal (issue 21), on the means over the repeats | measured | |", "| --- | --- | --- |"]
        lines += [f"| {g} | {v} | {r} |" for g, v, r in goals]
    text = "\n".join(lines)
    print(text)
    for r in runs:
        print(f"  {r['arm']} repeat {r['repeat']}: {r['passes']} passes, run {r['run_s']} s")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
