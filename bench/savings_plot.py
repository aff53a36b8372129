#!/usr/bin/python3
"""Plots a savings trace (docs/BENCHMARKS.md, "Lend only what holds").

Reads a `t,savings_kib,available_kib` trace (bench/record-savings.sh writes
one; its `# t=... guest ...` comment lines are the changes the guests made)
and draws the savings, and what a holding window of each given length
lends (the smallest reading of the window, the present one included, as
ksm-balloon's `pass::lend::hold` works it out), with the guests' changes
marked.

Usage: savings_plot.py TRACE.csv OUT.svg [--windows 60,120]
"""

import argparse
import re


def load(path):
    points, events = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            m = re.match(r"# t=(\d+) guest (\w+) (.*?):", line)
            if m:
                events.append((int(m.group(1)), f"{m.group(2)}: {m.group(3)}"))
            elif line and line[0].isdigit():
                t, s, a = (int(x) for x in line.split(","))
                points.append((t, s, a))
    return points, events


def held(points, window):
    out, seen = [], []
    for t, s, _ in points:
        seen = [(at, k) for at, k in seen if t - at < window] + [(t, s)]
        out.append(min(k for _, k in seen))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("out")
    ap.add_argument("--windows", default="60")
    args = ap.parse_args()
    points, events = load(args.trace)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    ts = [p[0] for p in points]
    ax.plot(ts, [p[1] / 1024 for p in points], color="C0", lw=1.3, label="KSM savings (general_profit)")
    for k, w in enumerate(int(x) for x in args.windows.split(",") if x):
        ax.step(ts, [v / 1024 for v in held(points, w)], where="post", color=f"C{k + 1}", lw=1.1,
                label=f"lent with a {w} s holding window")
    top = max(p[1] for p in points) / 1024
    for t, what in events:
        ax.axvline(t, color="0.8", lw=0.8, zorder=0)
        ax.text(t, top * 1.02, what, rotation=90, fontsize=6, va="bottom", ha="center", color="0.4")
    ax.set_ylim(0, top * 1.35)
    ax.set_xlabel("seconds (one sample every 10 s)")
    ax.set_ylabel("MiB")
    ax.set_title("A recorded savings trace: three guests changing the data they hold", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, metadata={"Date": None})


if __name__ == "__main__":
    main()
