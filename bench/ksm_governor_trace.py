#!/usr/bin/env python3
"""Recorded traces for the KSM governor's pure tests (issue 21).

Usage: bench/ksm_governor_trace.py RESULTS_DIR OUT_DIR [ARM...]

From a run of bench/ksm-governor.sh (RESULTS_DIR, e.g.
bench/results/ksm-governor), writes one CSV per arm and repeat
(OUT_DIR/<arm>-<repeat>.csv) with what each pass measured, as the rule
takes it (governor::Input), and the phase it fell in:

  t             seconds since the guests were ready (the phases' origin)
  phase         merge, quiet or churn (bench/ksm-governor.sh's three phases)
  savings_kib   the pass's savings (the report's savings_kib)
  pages_scanned KSM's pages_scanned
  full_scans    KSM's full_scans
  cpu_permille  ksmd's CPU since the pass before, thousandths of a core
                (empty: not measured yet)
  run           KSM's run as the pass found it
  pages_to_scan pages_to_scan as the pass found it (what the arm set)

ARM defaults to fast, default and manage: the arms whose KSM merged all
run long (ksmtuned stops KSM after its first minute on this rig; the
advisor sets pages_to_scan itself). The figures are what the real stack
measured under each arm's own scan rate: a replay through another rule is
open-loop (the savings do not answer the replayed rate), which is why the
tests ask only what a trace can answer (docs/TESTING.md).
"""

import csv
import gzip
import json
import os
import sys


def load_jsonl(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def find(d, name):
    for p in (os.path.join(d, name), os.path.join(d, name + ".gz")):
        if os.path.exists(p):
            return p
    raise SystemExit(f"ksm_governor_trace: no {name} in {d}")


def phase(t, arm):
    m, q = arm["merge_s"], arm["quiet_s"]
    return "merge" if t < m else "quiet" if t < m + q else "churn"


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    src, out = sys.argv[1], sys.argv[2]
    arms = sys.argv[3:] or ["fast", "default", "manage"]
    os.makedirs(out, exist_ok=True)
    for run in sorted(os.listdir(src)):
        d = os.path.join(src, run)
        if not os.path.isdir(d) or run.rsplit("-", 1)[0] not in arms:
            continue
        arm = json.load(open(os.path.join(d, "arm.json")))
        origin = arm["t0_epoch"] + arm["t_ready"]
        rows = []
        for r in load_jsonl(find(d, "passes.jsonl")):
            found = (r.get("ksm_governor") or {}).get("found") or {}
            knobs = found.get("knobs") or {}
            cpu = r["ksm_cost"]["ksmd_cpu_percent"]
            t = round(r["at"] - origin)
            rows.append({
                "t": t,
                "phase": phase(t, arm),
                "savings_kib": r["savings_kib"],
                "pages_scanned": r["ksm"]["pages_scanned"],
                "full_scans": r["ksm"]["full_scans"],
                "cpu_permille": "" if cpu is None else round(cpu * 10),
                "run": knobs.get("run", r["ksm"]["run"]),
                "pages_to_scan": knobs.get("pages_to_scan", ""),
            })
        path = os.path.join(out, f"{run}.csv")
        with open(path, "w", newline="") as f:
            f.write(f"# {run} of {src} (commit {json.load(open(os.path.join(src, 'settings.json')))['commit']}), "
                    f"by bench/ksm_governor_trace.py\n")
            w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
        print(f"{path}: {len(rows)} passes")


if __name__ == "__main__":
    main()
