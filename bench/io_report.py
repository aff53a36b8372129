#!/usr/bin/python3
"""The I/O benchmark's table and plots (docs/BENCHMARKS.md, part 1).

Reads what bench/io-effect.sh recorded (OUT/settings.json and one
OUT/[<rig>-]<arm>-<repeat>/ per run: samples.jsonl, arm.json, the consoles,
and for the arms running ksm-balloon its log and passes.jsonl) and
prints, per arm, over the measurement window (after the warm-up):

  - mean read throughput per guest (MB/s, 10^6 bytes): the median over
    repeats, with min and max; its ratio to arm a and to arm b;
  - the memory the guests cost the host: sum of the QEMU processes' RSS
    minus what KSM saved (general_profit), and the host's MemAvailable;
  - the guests' mean balloon size and MemTotal, KSM's savings, ksmd's CPU.

Runs of the demand benchmark (arm.json has a "rig": arms c, e and their
static oracles oc, oe, on the identical, mixed and unequal rigs) get their own
tables, per rig and arm: aggregate and per-guest throughput, the memory
lent (balloons above the floor) as a mean and in memory-seconds,
ksm-balloon's resizes per hour and the guests' OOM kills (their consoles'
"Out of memory" and "Kernel panic" lines), then issue 13's targets, each
said met or missed (issue 20's gates for the default split).

--oracle-of RUN prints, one line per guest, the size (MiB) of the static
oracle of RUN's policy: the median of the targets RUN's passes gave that
guest over the measured window (bench/io-effect.sh boots arms oc and oe
with them).

--plots DIR draws DIR/io-throughput.svg (throughput over time),
DIR/io-memory.svg (balloon size and KSM savings over time) and
DIR/io-summary.svg (the table as bars).

--check fails (exit 1) unless the run is complete and the rig behaved as
each arm says (the balloons read from t = 0 on, after bench/io-effect.sh saw
each at the size it booted at): every guest reported throughput in the
window; a, b and c booted at the floor, d at the ceiling; KSM saved nothing in a and d and
something in b and c; in b the balloons stayed at the floor; in c
ksm-balloon ran without a failed pass and grew every guest. It checks no
speed: figures are printed, not asserted.

(the demand benchmark: DIR/io-demand-throughput.svg, io-demand-memory.svg
and io-demand-summary.svg).

Usage: io_report.py OUT [--plots DIR] [--markdown FILE] [--check]
       io_report.py OUT --from S     (the tables over S s after t = 0 to the end)
       io_report.py --oracle-of RUN
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys

ARM_NAMES = {
    "a": "a: static floor, KSM off",
    "b": "b: KSM on, no ksm-balloon",
    "c": "c: KSM on + ksm-balloon every 10 s",
    "d": "d: static ceiling, KSM off",
    "e": "e: KSM on + ksm-balloon --split demand every 10 s",
    "oc": "oc: static oracle of c (KSM on)",
    "oe": "oe: static oracle of e (KSM on)",
}
DEMAND_NAMES = {
    "a": "a: static floor, KSM off",
    "b": "b: KSM only",
    "c": "c: equal split",
    "d": "d: static ceiling, KSM off",
    "e": "e: demand split",
    "oc": "oc: oracle of equal",
    "oe": "oe: oracle of demand",
    "gc": "gc: grown to oc's sizes",
    "ge": "ge: grown to oe's sizes",
    "gs": "gs: grown to oe's sizes, passes that change nothing",
    "gr": "gr: grown to oe's sizes at t = 60 s",
}
COLORS = {"a": "C7", "b": "C0", "c": "C3", "d": "C2", "e": "C1", "oc": "C4", "oe": "C5", "gc": "C6", "ge": "C8", "gs": "C9", "gr": "C0"}
ARM_ORDER = ["a", "b", "c", "oc", "gc", "e", "oe", "ge", "gs", "gr", "d"]
MIB = 1024
OOM_RE = re.compile(r"Out of memory|Kernel panic")


def raw(path):
    """The raw file at path, or its gzip'd copy (path + ".gz"): the committed
    results keep their raw samples, logs and consoles compressed (issue 19),
    a fresh run writes them plain. None when neither exists."""
    if os.path.exists(path):
        return open(path, errors="replace")
    if os.path.exists(path + ".gz"):
        return gzip.open(path + ".gz", "rt", errors="replace")
    return None


def load_run(path):
    with open(os.path.join(path, "arm.json")) as f:
        arm = json.load(f)
    tput, host = [], []
    with raw(os.path.join(path, "samples.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            # seconds since every guest was reading (or idling) with its
            # balloon at the size it booted at (bench/io-effect.sh waits for
            # both before it sets t_ready)
            r["t"] -= arm["t_ready"]
            (host if r["kind"] == "host" else tput).append(r)
    log = ""
    f = raw(os.path.join(path, "ksm-balloon.log"))
    if f:
        with f:
            log = f.read()
    status = {}
    sp = os.path.join(path, "status.json")
    if os.path.exists(sp):
        with open(sp) as f:
            status = json.load(f)
    passes = []
    f = raw(os.path.join(path, "passes.jsonl"))
    if f:
        with f:
            for line in f:
                r = json.loads(line)
                r["t"] = r["at"] - arm["t0_epoch"] - arm["t_ready"]
                passes.append(r)
    oom = {}
    for g in arm["guests"]:
        f = raw(os.path.join(path, f"{g}.console"))
        if f:
            with f:
                oom[g] = [line.strip() for line in f if OOM_RE.search(line)]
    arm.update(tput=tput, host=host, log=log, path=path, status=status, passes=passes, oom=oom)
    return arm


def in_window(run, t):
    return run["warmup_s"] <= t <= run["warmup_s"] + run["measure_s"]


def oracle_sizes(run):
    """Per guest, the median of the targets the run's passes gave it over
    the measured window, MiB (rounded)."""
    out = []
    for g in run["guests"]:
        ts = [v["target_kib"] for p in run["passes"] if in_window(run, p["t"])
              for v in p["vms"] if v["name"] == g]
        if not ts:
            sys.exit(f"{run['path']}: no pass in the measured window gave {g} a target")
        out.append(round(statistics.median(ts) / MIB))
    return out


def mean(v):
    return statistics.fmean(v) if v else float("nan")


def summarise(run):
    lo, hi = run["warmup_s"], run["warmup_s"] + run["measure_s"]
    guests = run["guests"]
    win_t = [r for r in run["tput"] if lo <= r["t"] <= hi]
    win_h = [r for r in run["host"] if lo <= r["t"] <= hi]
    per_guest = {g: mean([r["mbps"] for r in win_t if r["guest"] == g]) for g in guests}
    profit = [max(h["ksm"].get("general_profit") or 0, 0) / 1024 for h in win_h]
    rss = [sum(v or 0 for v in h["qemu_rss_kib"].values()) for h in win_h]
    ksmd = [(h["t"], h["ksmd_cpu_s"]) for h in win_h if h["ksmd_cpu_s"] is not None]
    ksmd_pct = (100 * (ksmd[-1][1] - ksmd[0][1]) / (ksmd[-1][0] - ksmd[0][0])
                if len(ksmd) > 1 and ksmd[-1][0] > ksmd[0][0] else float("nan"))
    balloon = [v for h in win_h for g, v in h["balloon_kib"].items() if g in guests]
    return {
        "arm": run["arm"],
        "repeat": run["repeat"],
        "per_guest_mbps": per_guest,
        "mbps": mean(list(per_guest.values())),
        "total_mbps": sum(per_guest.values()),
        "samples": len(win_t),
        "balloon_mib": mean(balloon) / MIB,
        "memtotal_mib": mean([r["memtotal_kib"] for r in win_t]) / MIB,
        "bdev_cache_mib": mean([r.get("buffers_kib", 0) for r in win_t]) / MIB,
        "ksm_profit_mib": mean(profit) / MIB,
        "guest_host_mib": mean([r - p for r, p in zip(rss, profit)]) / MIB,
        "qemu_rss_mib": mean(rss) / MIB,
        "mem_available_mib": mean([h["mem_available_kib"] for h in win_h]) / MIB,
        "ksmd_cpu_pct": ksmd_pct,
        "loadavg": mean([h["loadavg"] for h in win_h]),
        # what the passes did, from their reports (runs recorded before
        # passes.jsonl existed have none: None); the pass count and the
        # failed passes are the loop's own lines in the log, not ksm-balloon's
        "resizes": sum(p["resized"] for p in run["passes"]) if run["passes"] else None,
        "passes": run["log"].count("pass at "),
        "failed_passes": run["log"].count("pass failed"),
    }


def summarise_demand(run):
    """The demand benchmark's figures of one run, over the measured window."""
    s = summarise(run)
    readers = run.get("readers", run["guests"])
    # an idle guest runs no reader: it reads nothing
    per_guest = {g: (v if g in readers else 0.0) for g, v in s["per_guest_mbps"].items()}
    lo, hi = run["warmup_s"], run["warmup_s"] + run["measure_s"]
    floor = run["floor_kib"]
    win_h = [h for h in run["host"] if lo <= h["t"] <= hi and h["balloon_kib"]]
    # memory lent: the balloons above the floor, integrated over the window
    lent = [(h["t"], sum(max(h["balloon_kib"].get(g, floor) - floor, 0) for g in run["guests"]))
            for h in win_h]
    mib_s = sum((t1 - t0) * (v0 + v1) / 2 for (t0, v0), (t1, v1) in zip(lent, lent[1:])) / MIB
    per_guest_balloon = {g: mean([h["balloon_kib"][g] for h in win_h if g in h["balloon_kib"]]) / MIB
                         for g in run["guests"]}
    win_p = [p for p in run["passes"] if in_window(run, p["t"])]
    s.update(
        rig=run.get("rig", "identical"),
        per_guest_mbps=per_guest,
        total_mbps=sum(per_guest.values()),
        lent_mib=mean([v for _, v in lent]) / MIB,
        lent_mib_s=mib_s,
        per_guest_balloon_mib=per_guest_balloon,
        window_resizes=sum(p["resized"] for p in win_p),
        window_passes=len(win_p),
        all_resizes=sum(p["resized"] for p in run["passes"]),
        all_passes=len(run["passes"]),
        resizes_per_hour=(sum(p["resized"] for p in win_p) * 3600 / run["measure_s"]
                          if run["passes"] else float("nan")),
        oom_kills=sum(len(v) for v in run["oom"].values()),
        runs_ksm_balloon=bool(run["passes"]) or run["arm"] in ("c", "e"),
    )
    return s


# bench/io-effect.sh's rigs, in the order the tables show them
RIGS = ("mixed", "unequal", "identical")
RIG_TITLES = {
    "mixed": "guest 0 reads, 1 and 2 idle",
    "unequal": "guest 0 reads its disk, 1 its first {span} MiB, 2 diskless",
    "identical": "all three read",
}


def demand_tables(summ, settings):
    by = collections.OrderedDict()
    rigs = [r for r in RIGS if any(s["rig"] == r for s in summ)]
    for rig in rigs:
        for a in ARM_ORDER + sorted({s["arm"] for s in summ} - set(ARM_ORDER)):
            v = sorted((s for s in summ if s["rig"] == rig and s["arm"] == a), key=lambda s: s["repeat"])
            if v:
                by[(rig, a)] = v
    med = {k: statistics.median([s["total_mbps"] for s in v]) for k, v in by.items()}
    counts = sorted({len(v) for v in by.values()})
    out = [
        f"Per rig and arm, over the {settings['measure_s']} s after a {settings['warmup_s']} s warm-up; "
        f"median over {'/'.join(map(str, counts))} repeat(s) (min-max); {settings['guests']} guests, "
        f"floor {settings['floor_mib']} MiB, ceiling {settings['ceiling_mib']} MiB. "
        + "; ".join(f"{r} rig: {RIG_TITLES[r].format(span=settings.get('span_mib', '?'))}" for r in rigs) + ".",
        "",
        "| rig | arm | aggregate MB/s | vs c | vs its oracle | MB/s per guest (0, 1, 2) | balloon MiB per guest "
        "| lent MiB (mean) | lent MiB·s | resizes per hour | OOM kills | KSM saved MiB | load avg |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (rig, a), v in by.items():
        vc = f"{med[(rig, a)] / med[(rig, 'c')]:.2f}" if (rig, "c") in med else "-"
        orc = (rig, "o" + a)
        vo = f"{med[(rig, a)] / med[orc]:.2f}" if orc in med else "-"
        guests = list(v[0]["per_guest_mbps"])
        pg = ", ".join(fmt_range([s["per_guest_mbps"][g] for s in v]) for g in guests)
        pb = ", ".join(f"{statistics.median([s['per_guest_balloon_mib'][g] for s in v]):.0f}" for g in guests)
        rz = fmt_range([s["resizes_per_hour"] for s in v], 0) if v[0]["runs_ksm_balloon"] else "-"
        out.append(
            f"| {rig} | {DEMAND_NAMES.get(a, a)} | {fmt_range([s['total_mbps'] for s in v])} | {vc} | {vo} | "
            f"{pg} | {pb} | {fmt_range([s['lent_mib'] for s in v], 0)} | "
            f"{fmt_range([s['lent_mib_s'] for s in v], 0)} | {rz} | {sum(s['oom_kills'] for s in v)} | "
            f"{fmt_range([s['ksm_profit_mib'] for s in v], 0)} | {fmt_range([s['loadavg'] for s in v], 1)} |"
        )
    out += [
        "",
        "Every run (each guest's mean over the window):",
        "",
        "| rig | arm | repeat | aggregate MB/s | per guest MB/s | balloon MiB per guest | lent MiB·s "
        "| resizes (window / run) | OOM kills |",
        "|---|---|---:|---:|---|---|---:|---:|---:|",
    ]
    for (rig, a), v in by.items():
        for s in v:
            pg = ", ".join(f"{x:.1f}" for x in s["per_guest_mbps"].values())
            pb = ", ".join(f"{x:.0f}" for x in s["per_guest_balloon_mib"].values())
            rz = (f"{s['window_resizes']} in {s['window_passes']} / {s['all_resizes']} in {s['all_passes']} passes"
                  if s["runs_ksm_balloon"] else "-")
            out.append(f"| {rig} | {a} | {s['repeat']} | {s['total_mbps']:.1f} | {pg} | {pb} | "
                       f"{s['lent_mib_s']:.0f} | {rz} | {s['oom_kills']} |")
    out += ["", "Issue 20's gates for the default split (medians over repeats):", ""]
    out += [f"- {t}" for t in targets(med, by)]
    return "\n".join(out)


def targets(med, by):
    res = []

    def ratio(x, y):
        return med[x] / med[y] if x in med and y in med and med[y] else None

    def say(what, r, ok, goal):
        if r is None:
            res.append(f"{what}: not measured")
        else:
            res.append(f"{what}: {r:.2f} ({goal}): **{'met' if ok(r) else 'missed'}**")

    for rig in ("mixed", "unequal"):
        say(f"{rig} rig, demand / equal aggregate", ratio((rig, "e"), (rig, "c")), lambda r: r >= 1.3, ">= 1.30")
    say("identical rig, demand / equal aggregate", ratio(("identical", "e"), ("identical", "c")),
        lambda r: abs(r - 1) <= 0.05, "within 0.95-1.05")
    for rig in RIGS:
        for a, name in (("c", "equal"), ("e", "demand")):
            say(f"{rig} rig, {name} / its static oracle", ratio((rig, a), (rig, "o" + a)),
                lambda r: r >= 0.95, ">= 0.95")
    ooms = sum(s["oom_kills"] for v in by.values() for s in v)
    res.append(f"guest OOM kills in every arm: {ooms}: **{'met' if ooms == 0 else 'missed'}**")
    return res


def fmt_range(vals, nd=1):
    vals = [v for v in vals if v == v]
    if not vals:
        return "-"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.{nd}f}"
    return f"{med:.{nd}f} ({min(vals):.{nd}f}-{max(vals):.{nd}f})"


def tables(summ, settings):
    by_arm = collections.OrderedDict()
    for s in sorted(summ, key=lambda s: (s["arm"], s["repeat"])):
        by_arm.setdefault(s["arm"], []).append(s)
    med = {a: statistics.median([s["mbps"] for s in v]) for a, v in by_arm.items()}
    counts = sorted({len(v) for v in by_arm.values()})
    reps = "/".join(map(str, counts))
    out = [
        f"Per arm, over the {settings['measure_s']} s after a {settings['warmup_s']} s warm-up; "
        f"median over {reps} repeat(s) (min-max); {settings['guests']} guests.",
        "",
        "| arm | MB/s per guest | vs a | vs b | guest RAM on host MiB (RSS - KSM) | host MemAvailable MiB "
        "| balloon MiB | guest MemTotal MiB | guest disk cache MiB | KSM saved MiB | ksmd CPU % | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a, v in by_arm.items():
        ra = f"{med[a] / med['a']:.2f}" if "a" in med else "-"
        rb = f"{med[a] / med['b']:.2f}" if "b" in med else "-"
        out.append(
            f"| {ARM_NAMES.get(a, a)} | {fmt_range([s['mbps'] for s in v])} | {ra} | {rb} | "
            f"{fmt_range([s['guest_host_mib'] for s in v], 0)} | "
            f"{fmt_range([s['mem_available_mib'] for s in v], 0)} | "
            f"{fmt_range([s['balloon_mib'] for s in v], 0)} | "
            f"{fmt_range([s['memtotal_mib'] for s in v], 0)} | "
            f"{fmt_range([s['bdev_cache_mib'] for s in v], 0)} | "
            f"{fmt_range([s['ksm_profit_mib'] for s in v], 0)} | "
            f"{fmt_range([s['ksmd_cpu_pct'] for s in v], 0)} | "
            f"{fmt_range([s['loadavg'] for s in v], 1)} |"
        )
    out += [
        "",
        "Every run (MB/s per guest, each guest's mean over the window):",
        "",
        "| arm | repeat | mean MB/s | per guest | balloon MiB | KSM saved MiB | ksm-balloon resizes |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for a, v in by_arm.items():
        for s in v:
            pg = ", ".join(f"{x:.1f}" for x in s["per_guest_mbps"].values())
            rz = "-"
            if a == "c":
                rz = ("no pass reports" if s["resizes"] is None
                      else f"{s['resizes']} in {s['passes']} passes" if s["passes"] else str(s["resizes"]))
            out.append(f"| {a} | {s['repeat']} | {s['mbps']:.1f} | {pg} | {s['balloon_mib']:.0f} | "
                       f"{s['ksm_profit_mib']:.0f} | {rz} |")
    return "\n".join(out)


def binned(points, width):
    bins = collections.defaultdict(list)
    for t, v in points:
        bins[int(t // width)].append(v)
    ks = sorted(bins)
    return [(k + 0.5) * width for k in ks], [mean(bins[k]) for k in ks]


def save_kw(ext):
    # no timestamp in the SVG, so a rerun with the same data is byte-identical
    return {"metadata": {"Date": None}} if ext == "svg" else {"dpi": 80}


def plots(runs, settings, outdir, ext="svg"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    lo, hi = settings["warmup_s"], settings["warmup_s"] + settings["measure_s"]
    seen = set()

    def label(arm):
        if arm in seen:
            return None
        seen.add(arm)
        return ARM_NAMES.get(arm, arm)

    # throughput over time: mean over guests, 10 s bins, one line per run
    fig, ax = plt.subplots(figsize=(10, 5))
    for r in runs:
        xs, ys = binned([(t["t"], t["mbps"]) for t in r["tput"]], 10)
        ax.plot(xs, ys, color=COLORS.get(r["arm"]), alpha=0.8, lw=1.2, label=label(r["arm"]))
    ax.axvspan(0, lo, color="0.9", zorder=0)
    ax.text(lo / 2, 0.97, "warm-up", transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=8)
    ax.set_xlim(0, hi)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds since every guest was reading")
    ax.set_ylabel("MB/s per guest (mean of the guests, 10 s bins)")
    ax.set_title(f"Random 1 MiB reads, {settings['guests']} guests, {settings['data_mib']} MiB disk each "
                 f"at {settings['iotune_mibs']} MiB/s, cache=none")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, f"io-throughput.{ext}"), **save_kw(ext))
    plt.close(fig)

    # balloon size and KSM savings over time
    seen.clear()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in runs:
        pts = [(h["t"], mean([v for g, v in h["balloon_kib"].items() if g in r["guests"]]) / MIB)
               for h in r["host"] if h["balloon_kib"]]
        pts = [p for p in pts if p[1] == p[1]]
        lab = label(r["arm"])
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS.get(r["arm"]), lw=1.2, label=lab)
        ax2.plot([h["t"] for h in r["host"]],
                 [max(h["ksm"].get("general_profit") or 0, 0) / 2**20 for h in r["host"]],
                 color=COLORS.get(r["arm"]), lw=1.2, label=lab)
    for ax, yl, title in ((ax1, "MiB (mean of the guests)", "balloon size (balloon.current)"),
                          (ax2, "MiB", "KSM savings (general_profit)")):
        ax.axvspan(min(0, ax.get_xlim()[0]), 0, color="0.9", zorder=0)
        ax.axvspan(0, lo, color="0.95", zorder=0)
        ax.set_xlim(right=hi)
        ax.set_xlabel("seconds since every guest was reading (grey: booting, warm-up)")
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, f"io-memory.{ext}"), **save_kw(ext))
    plt.close(fig)

    # summary bars
    summ = [summarise(r) for r in runs]
    arms = sorted({s["arm"] for s in summ})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, a in enumerate(arms):
        v = [s["mbps"] for s in summ if s["arm"] == a]
        m = [s["guest_host_mib"] for s in summ if s["arm"] == a]
        for ax, vals in ((ax1, v), (ax2, m)):
            med = statistics.median(vals)
            ax.bar(i, med, color=COLORS.get(a), yerr=[[med - min(vals)], [max(vals) - med]], capsize=4)
            ax.text(i, med / 2, f"{med:.0f}", ha="center", color="white", fontsize=9)
    for ax, yl in ((ax1, "MB/s per guest (median, min-max)"),
                   (ax2, "guest RAM on host, MiB (QEMU RSS - KSM)")):
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([ARM_NAMES.get(a, a).replace(": ", ":\n", 1) for a in arms], fontsize=8)
        ax.set_ylabel(yl)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, f"io-summary.{ext}"), **save_kw(ext))
    plt.close(fig)
    print(f"wrote {outdir}/io-throughput.{ext}, io-memory.{ext}, io-summary.{ext}", file=sys.stderr)


def plots_demand(runs, settings, outdir, ext="svg"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(outdir, exist_ok=True)
    lo, hi = settings["warmup_s"], settings["warmup_s"] + settings["measure_s"]
    rigs = [r for r in RIGS if any(x.get("rig") == r for x in runs)]
    titles = {r: f"{r} rig: " + RIG_TITLES[r].format(span=settings.get("span_mib", "?")) for r in rigs}

    # aggregate throughput over time, one line per run
    fig, axes = plt.subplots(1, len(rigs), figsize=(6 * len(rigs), 4.5), squeeze=False)
    for ax, rig in zip(axes[0], rigs):
        seen = set()
        for r in sorted((x for x in runs if x.get("rig") == rig), key=lambda x: ARM_ORDER.index(x["arm"])):
            per = []
            for g in r.get("readers", r["guests"]):
                xs, ys = binned([(t["t"], t["mbps"]) for t in r["tput"] if t["guest"] == g], 10)
                per.append(dict(zip(xs, ys)))
            xs = sorted(set.intersection(*(set(p) for p in per))) if per else []
            lab = None if r["arm"] in seen else DEMAND_NAMES.get(r["arm"], r["arm"])
            seen.add(r["arm"])
            ax.plot(xs, [sum(p[x] for p in per) for x in xs], color=COLORS.get(r["arm"]), lw=1.1,
                    alpha=0.8, label=lab)
        ax.axvspan(0, lo, color="0.9", zorder=0)
        ax.set_xlim(0, hi)
        ax.set_yscale("log")
        ax.set_xlabel("seconds since every reader was reading (grey: warm-up)")
        ax.set_ylabel("aggregate MB/s (10 s bins, log scale)")
        ax.set_title(titles[rig], fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, f"io-demand-throughput.{ext}"), **save_kw(ext))
    plt.close(fig)

    # balloons over time: each guest of the first repeat's c and e runs
    fig, axes = plt.subplots(1, len(rigs), figsize=(6 * len(rigs), 4.5), squeeze=False)
    for ax, rig in zip(axes[0], rigs):
        for arm, style in (("c", "--"), ("e", "-")):
            r = next((x for x in sorted(runs, key=lambda x: x["repeat"])
                      if x.get("rig") == rig and x["arm"] == arm), None)
            if r is None:
                continue
            for k, g in enumerate(r["guests"]):
                pts = [(h["t"], h["balloon_kib"][g] / MIB) for h in r["host"] if g in h["balloon_kib"]]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=style, color=f"C{k}", lw=1.1,
                        label=f"{DEMAND_NAMES[arm]}: guest {k}{' (reads)' if g in r.get('readers', []) else ''}")
        ax.axvspan(min(0, ax.get_xlim()[0]), 0, color="0.9", zorder=0)
        ax.axvspan(0, lo, color="0.95", zorder=0)
        ax.set_xlim(right=hi)
        ax.set_xlabel("seconds since every reader was reading (grey: booting, warm-up)")
        ax.set_ylabel("balloon.current, MiB")
        ax.set_title(titles[rig] + " (repeat 1)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, f"io-demand-memory.{ext}"), **save_kw(ext))
    plt.close(fig)

    # summary: aggregate throughput per arm, median and range
    summ = [summarise_demand(r) for r in runs]
    fig, axes = plt.subplots(1, len(rigs), figsize=(6 * len(rigs), 4), squeeze=False)
    for ax, rig in zip(axes[0], rigs):
        arms = [a for a in ARM_ORDER if any(s["rig"] == rig and s["arm"] == a for s in summ)]
        for i, a in enumerate(arms):
            vals = [s["total_mbps"] for s in summ if s["rig"] == rig and s["arm"] == a]
            med = statistics.median(vals)
            ax.bar(i, med, color=COLORS.get(a), yerr=[[med - min(vals)], [max(vals) - med]], capsize=4)
            ax.text(i, med / 2, f"{med:.0f}", ha="center", color="white", fontsize=9)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([DEMAND_NAMES.get(a, a).replace(": ", ":\n", 1) for a in arms], fontsize=8)
        ax.set_ylabel("aggregate MB/s (median, min-max)")
        ax.set_title(titles[rig], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, f"io-demand-summary.{ext}"), **save_kw(ext))
    plt.close(fig)
    print(f"wrote {outdir}/io-demand-throughput.{ext}, io-demand-memory.{ext}, io-demand-summary.{ext}",
          file=sys.stderr)


def check(runs, settings):
    bad = []
    floor, ceil = settings["floor_mib"] * MIB, settings["ceiling_mib"] * MIB
    for r in runs:
        s = summarise(r)
        arm = r["arm"]
        what = f"{r['rig'] + ' rig, ' if 'rig' in r else ''}arm {arm} repeat {r['repeat']}"
        readers = r.get("readers", r["guests"])
        for g, v in s["per_guest_mbps"].items():
            if v != v and g in readers:
                bad.append(f"{what}: guest {g} reported no throughput in the window")
            if v == v and g not in readers:
                bad.append(f"{what}: idle guest {g} read")
        boot = r.get("boot_mib_per_guest") or [r["boot_mib"]] * len(r["guests"])
        grown = r.get("grown_mib_per_guest") or []
        if arm in ("gc", "ge", "gs", "gr"):
            if [b * MIB for b in boot] != [floor] * len(r["guests"]):
                bad.append(f"{what}: booted at {boot} MiB, expected the floor")
            want = [b * MIB for b in grown]
            if len(want) != len(r["guests"]) or not all(floor <= w <= ceil for w in want):
                bad.append(f"{what}: grown to {grown} MiB, not within the floor and ceiling for each guest")
                continue
        elif arm in ("oc", "oe"):
            want = [b * MIB for b in boot]
            if not all(floor <= w <= ceil for w in want):
                bad.append(f"{what}: oracle sizes {boot} MiB outside the floor and ceiling")
        else:
            want = [ceil if arm == "d" else floor] * len(r["guests"])
            if [b * MIB for b in boot] != want:
                bad.append(f"{what}: booted at {boot} MiB, expected {[w // MIB for w in want]}")
        # the window these checks read: from t = 0, the state io-effect.sh
        # waited for (every balloon at its boot size), to the run's end; a
        # sample taken at t >= 0 was started after that state was seen
        first = next((h for h in r["host"] if h["t"] >= 0 and h["balloon_kib"]), None)
        if first is None:
            bad.append(f"{what}: no balloon samples")
            continue
        dynamic = arm in ("c", "e")
        if not dynamic:
            # gr grows later: at t = 0 it is at its boot size, the floor
            for g, w in zip(r["guests"], [floor] * len(want) if arm == "gr" else want):
                b = first["balloon_kib"].get(g)
                if b is None or abs(b - w) > MIB:
                    bad.append(f"{what}: {g} balloon {b} KiB at the first sample after t = 0 "
                               f"(every balloon seen at its boot size), expected {w}")
        else:
            # ksm-balloon's first pass starts as the reading does and may beat
            # the first sample: check what it saw instead
            floors = {v["name"]: (v["floor_kib"], v["ceiling_kib"]) for v in r["status"].get("vms", [])}
            for g in r["guests"]:
                if floors.get(g) != (floor, ceil):
                    bad.append(f"{what}: ksm-balloon recorded {g} as (floor, ceiling) {floors.get(g)}, "
                               f"expected {(floor, ceil)}")
                first = next((v for p in sorted(r["passes"], key=lambda p: p["at"]) for v in p["vms"]
                              if v["name"] == g and v["action"] in ("grow", "shrink") and v["error"] is None),
                             None)
                if first and abs(first["current_kib"] - floor) > MIB:
                    bad.append(f"{what}: ksm-balloon's first resize of {g} did not start at the floor "
                               f"({first['current_kib']} -> {first['target_kib']} KiB)")
        if arm in ("a", "d") and s["ksm_profit_mib"] > 0:
            bad.append(f"{what}: KSM saved {s['ksm_profit_mib']:.0f} MiB with KSM off")
        if arm not in ("a", "d") and not s["ksm_profit_mib"] > 0:
            bad.append(f"{what}: KSM saved nothing with KSM on")
        win = [h for h in r["host"] if h["t"] >= 0]
        if arm in ("b", "oc", "oe", "gc", "ge", "gs", "gr"):
            for g, w in zip(r["guests"], want):
                top = max(h["balloon_kib"].get(g, 0) for h in win)
                if top > w + MIB:
                    bad.append(f"{what}: {g}'s balloon grew to {top} KiB without ksm-balloon")
        if arm == "gr":
            # grown late, once: at the end every balloon at its size
            for g, w in zip(r["guests"], want):
                b = win[-1]["balloon_kib"].get(g) if win else None
                if b is None or abs(b - w) > MIB:
                    bad.append(f"{what}: {g}'s balloon at {b} KiB at the end, expected it grown to {w}")
        if arm == "gs":
            # passes beside it, every one a dry run that resized nothing
            if not r["passes"]:
                bad.append(f"{what}: no pass reports (passes.jsonl)")
            if any(not p["dry_run"] or p["resized"] for p in r["passes"]):
                bad.append(f"{what}: a pass that was to change nothing was not a dry run or resized")
            if s["failed_passes"]:
                bad.append(f"{what}: {s['failed_passes']} ksm-balloon passes failed")
        if dynamic:
            if s["failed_passes"]:
                bad.append(f"{what}: {s['failed_passes']} ksm-balloon passes failed")
            if not r["passes"] and "rig" in r:
                bad.append(f"{what}: no pass reports (passes.jsonl)")
            # every guest in the equal split, the readers in the demand one
            for g in r["guests"] if arm == "c" else readers:
                top = max(h["balloon_kib"].get(g, 0) for h in win)
                if top <= floor + 4 * MIB:
                    bad.append(f"{what}: ksm-balloon never grew {g} (max {top} KiB)")
    return bad


def window_from(ap, start, settings, runs):
    """--from S: the window runs from S s after t = 0 to its end, in the
    settings and every run (what the summaries read)."""
    end = settings["warmup_s"] + settings["measure_s"]
    if not 0 <= start < end:
        ap.error(f"--from {start:g}: not within 0 and the window's end ({end} s)")
    for x in [settings] + runs:
        x["warmup_s"], x["measure_s"] = start, end - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?")
    ap.add_argument("--oracle-of", metavar="RUN")
    ap.add_argument("--plots")
    ap.add_argument("--format", default="svg", choices=("svg", "png"), help="of the plots")
    ap.add_argument("--markdown")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--from", dest="start", type=float, metavar="S",
                    help="measure from S s after t = 0 to the window's end, not from the warm-up's end: "
                         "prints the tables only (no summary.json, plots or checks)")
    args = ap.parse_args()
    if args.oracle_of:
        print("\n".join(map(str, oracle_sizes(load_run(args.oracle_of)))))
        return
    if not args.out:
        ap.error("OUT is required")
    with open(os.path.join(args.out, "settings.json")) as f:
        settings = json.load(f)
    runs = [load_run(os.path.dirname(p)) for p in sorted(glob.glob(os.path.join(args.out, "*/arm.json")))]
    if not runs:
        sys.exit(f"no runs under {args.out}")
    for r in runs:
        r["floor_kib"] = settings["floor_mib"] * MIB
    if args.start is not None:
        # the same runs over a later (or earlier) start: e.g. after a
        # policy arm's ramp, to compare it with its oracle at steady state
        window_from(ap, args.start, settings, runs)
        args.markdown = args.plots = None
        args.check = False
    demand = any("rig" in r for r in runs)
    if demand:
        summ = [summarise_demand(r) for r in runs]
        md = demand_tables(summ, settings)
    else:
        summ = [summarise(r) for r in runs]
        md = tables(summ, settings)
    print(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    if args.start is None:
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summ, f, indent=1)
    if args.plots:
        if demand:
            plots_demand(runs, settings, args.plots, args.format)
        else:
            plots(runs, settings, args.plots, args.format)
    if args.check:
        bad = check(runs, settings)
        for b in bad:
            print("CHECK FAILED: " + b, file=sys.stderr)
        if bad:
            sys.exit(1)
        print(f"checked: {len(runs)} runs complete, every arm behaved as it says", file=sys.stderr)


if __name__ == "__main__":
    main()
