#!/usr/bin/python3
"""Draws docs/bench/pass-cost.svg from bench/pass_cost.py's JSON results.

Left: wall time of one pass (median of the timed runs) against N, for
ksm-balloon and the per-VM virsh alternative. Right: libvirt calls into
the driver per pass, counted from libvirt's client debug log.

Usage: plot_pass_cost.py RESULTS.json... --svg OUT.svg
"""

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {
    ("ksm-balloon", "first"): ("ksm-balloon, first pass (adopts, N writes)", "C0", "-o"),
    ("ksm-balloon", "steady"): ("ksm-balloon, steady (0 writes)", "C2", "-s"),
    ("ksm-balloon", "grown"): ("ksm-balloon, savings grown", "C1", "-^"),
    ("virsh-session", "tick"): ("virsh, 1 session, per-VM calls", "C3", "--D"),
    ("virsh-process", "tick"): ("virsh, 1 process per call", "C4", "--v"),
    ("virsh-connect-only", "connect"): ("one virsh connect, nothing else", "0.5", ":x"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--svg", required=True)
    args = ap.parse_args()
    rows = []
    for p in args.results:
        with open(p) as f:
            rows += json.load(f)["results"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    for driver, face in (("test", True), ("qemu", False)):
        for key, (label, color, fmt) in STYLE.items():
            pts = sorted((r["n"], r) for r in rows
                         if r["driver"] == driver and (r["tool"], r["scenario"]) == key)
            if not pts:
                continue
            ns = [n for n, _ in pts]
            lab = f"{label} [{'test driver' if driver == 'test' else 'qemu:///system'}]"
            kw = dict(color=color, markerfacecolor=color if face else "white", label=lab)
            if driver == "qemu":
                kw["markersize"] = 9
                fmt = fmt.lstrip("-:")  # a marker alone: one N, no line
            ax1.plot(ns, [r["wall_s"]["median"] * 1000 for _, r in pts], fmt, **kw)

    # right: the calls, by kind, test driver (lines) and qemu (open markers)
    calls = [
        ("ksm-balloon", "steady", "per_domain_info",
         "ksm-balloon per-VM info reads (test driver only:\nits bulk stats have no balloon fields)", "0.5", ":o"),
        ("ksm-balloon", "first", "bulk_stats", "ksm-balloon bulk reads (every situation)", "C0", "-o"),
        ("ksm-balloon", "first", "set_memory", "ksm-balloon writes, first pass", "C0", "--o"),
        ("ksm-balloon", "grown", "set_memory", "ksm-balloon writes, savings grown", "C1", "--^"),
        ("ksm-balloon", "steady", "set_memory", "ksm-balloon writes, steady", "C2", "--s"),
        ("virsh-session", "tick", "reads_writes", "virsh alternative: per-VM reads + writes", "C3", "--D"),
    ]
    for driver, face in (("test", True), ("qemu", False)):
        for tool, scen, field, label, color, fmt in calls:
            pts = sorted((r["n"], r) for r in rows
                         if r["driver"] == driver and r["tool"] == tool and r["scenario"] == scen)
            if not pts:
                continue
            lg = [r["calls_libvirt_log"] for _, r in pts]
            ys = [c["memory_stats"] + c["set_memory"] if field == "reads_writes" else c[field] for c in lg]
            kw = dict(color=color, markerfacecolor=color if face else "white",
                      label=label if driver == "test" else None)
            if field == "per_domain_info":
                # the same values as the first pass's writes: big open rings, so both show
                kw.update(markerfacecolor="none", markersize=11, lw=2.5)
            if driver == "qemu":
                kw["markersize"] = 9
                fmt = fmt.lstrip("-:")
            ax2.plot([n for n, _ in pts], ys, fmt, **kw)
    ax2.set_yscale("symlog", linthresh=1)
    ax2.set_xscale("log")
    ax2.set_xlabel("N domains (open markers: qemu:///system)")
    ax2.set_ylabel("calls per pass (libvirt client debug log)")
    ax2.set_title("libvirt calls per pass / tick, by kind")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, loc="upper left")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("N domains")
    ax1.set_ylabel("ms (median)")
    ax1.set_title("wall time of one pass / tick")
    ax1.grid(True, which="both", alpha=0.3)
    handles, labels = ax1.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower left", ncol=2, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(args.svg)), exist_ok=True)
    fig.savefig(args.svg, metadata={"Date": None})
    print(f"wrote {args.svg}")


if __name__ == "__main__":
    main()
