#!/usr/bin/python3
"""The I/O benchmark's table and plots (docs/BENCHMARKS.md, part 1).

Reads what bench/io-effect.sh recorded (OUT/settings.json and one
OUT/<arm>-<repeat>/ per run: samples.jsonl, arm.json, ksm-balloon.log) and
prints, per arm, over the measurement window (after the warm-up):

  - mean read throughput per guest (MB/s, 10^6 bytes): the median over
    repeats, with min and max; its ratio to arm a and to arm b;
  - the memory the guests cost the host: sum of the QEMU processes' RSS
    minus what KSM saved (general_profit), and the host's MemAvailable;
  - the guests' mean balloon size and MemTotal, KSM's savings, ksmd's CPU.

--plots DIR draws DIR/io-throughput.svg (throughput over time),
DIR/io-memory.svg (balloon size and KSM savings over time) and
DIR/io-summary.svg (the table as bars).

--check fails (exit 1) unless the run is complete and the rig behaved as
each arm says: every guest reported throughput in the window; a, b and c
booted at the floor, d at the ceiling; KSM saved nothing in a and d and
something in b and c; in b the balloons stayed at the floor; in c
ksm-balloon ran without a failed pass and grew every guest. It checks no
speed: figures are printed, not asserted.

Usage: io_report.py OUT [--plots DIR] [--markdown FILE] [--check]
"""

import argparse
import collections
import glob
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
}
COLORS = {"a": "C7", "b": "C0", "c": "C3", "d": "C2"}
MIB = 1024


def load_run(path):
    with open(os.path.join(path, "arm.json")) as f:
        arm = json.load(f)
    tput, host = [], []
    with open(os.path.join(path, "samples.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            r["t"] -= arm["t_ready"]  # seconds since every guest was reading
            (tput if r["kind"] == "tput" else host).append(r)
    log = ""
    lp = os.path.join(path, "ksm-balloon.log")
    if os.path.exists(lp):
        with open(lp, errors="replace") as f:
            log = f.read()
    status = {}
    sp = os.path.join(path, "status.json")
    if os.path.exists(sp):
        with open(sp) as f:
            status = json.load(f)
    arm.update(tput=tput, host=host, log=log, path=path, status=status)
    return arm


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
        "resizes": run["log"].count(" -> "),
        "passes": run["log"].count("pass at "),
        "failed_passes": run["log"].count("pass failed"),
    }


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
                rz = f"{s['resizes']} in {s['passes']} passes" if s["passes"] else str(s["resizes"])
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


def check(runs, settings):
    bad = []
    floor, ceil = settings["floor_mib"] * MIB, settings["ceiling_mib"] * MIB
    for r in runs:
        s = summarise(r)
        what = f"arm {r['arm']} repeat {r['repeat']}"
        for g, v in s["per_guest_mbps"].items():
            if v != v:
                bad.append(f"{what}: guest {g} reported no throughput in the window")
        want = ceil if r["arm"] == "d" else floor
        if r["boot_mib"] * MIB != want:
            bad.append(f"{what}: booted at {r['boot_mib']} MiB, expected {want // MIB}")
        first = next((h for h in r["host"] if h["t"] >= 0 and h["balloon_kib"]), None)
        if first is None:
            bad.append(f"{what}: no balloon samples")
            continue
        if r["arm"] != "c":
            for g in r["guests"]:
                b = first["balloon_kib"].get(g)
                if b is None or abs(b - want) > MIB:
                    bad.append(f"{what}: {g} balloon {b} KiB when reading started, expected {want}")
        else:
            # ksm-balloon's first pass starts as the reading does and may beat
            # the first sample: check what it saw instead
            floors = {v["name"]: (v["floor_kib"], v["ceiling_kib"]) for v in r["status"].get("vms", [])}
            for g in r["guests"]:
                if floors.get(g) != (floor, ceil):
                    bad.append(f"{what}: ksm-balloon recorded {g} as (floor, ceiling) {floors.get(g)}, "
                               f"expected {(floor, ceil)}")
                m = re.search(rf'VM "{re.escape(g)}": ([0-9.]+) MiB -> ', r["log"])
                if not m or abs(float(m.group(1)) * MIB - floor) > MIB:
                    bad.append(f"{what}: ksm-balloon's first resize of {g} did not start at the floor "
                               f"({m.group(0) if m else 'no resize'})")
        if r["arm"] in "ad" and s["ksm_profit_mib"] > 0:
            bad.append(f"{what}: KSM saved {s['ksm_profit_mib']:.0f} MiB with KSM off")
        if r["arm"] in "bc" and not s["ksm_profit_mib"] > 0:
            bad.append(f"{what}: KSM saved nothing with KSM on")
        win = [h for h in r["host"] if h["t"] >= 0]
        if r["arm"] == "b":
            top = max(v for h in win for v in h["balloon_kib"].values())
            if top > floor + MIB:
                bad.append(f"{what}: a balloon grew to {top} KiB without ksm-balloon")
        if r["arm"] == "c":
            if s["failed_passes"]:
                bad.append(f"{what}: {s['failed_passes']} ksm-balloon passes failed")
            for g in r["guests"]:
                top = max(h["balloon_kib"].get(g, 0) for h in win)
                if top <= floor + 4 * MIB:
                    bad.append(f"{what}: ksm-balloon never grew {g} (max {top} KiB)")
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--plots")
    ap.add_argument("--format", default="svg", choices=("svg", "png"), help="of the plots")
    ap.add_argument("--markdown")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    with open(os.path.join(args.out, "settings.json")) as f:
        settings = json.load(f)
    runs = [load_run(os.path.dirname(p)) for p in sorted(glob.glob(os.path.join(args.out, "*/arm.json")))]
    if not runs:
        sys.exit(f"no runs under {args.out}")
    summ = [summarise(r) for r in runs]
    md = tables(summ, settings)
    print(md)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summ, f, indent=1)
    if args.plots:
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
