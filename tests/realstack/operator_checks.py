#!/usr/bin/env python3
"""The checks of tests/realstack/operator.sh, on the JSON reports of real
`ksm-balloon run --json` passes (never on log lines) and on the metrics
files those passes wrote.

Usage:
  operator_checks.py show REPORT PREFIX
      one line per VM: action, reason, size before -> target, bonus, weight
  operator_checks.py get REPORT PREFIX GUEST PATH
      a field of the guest's row (PATH: dotted, e.g. held_by_hand.size_kib);
      JSON for objects and null
  operator_checks.py split REPORT PREFIX GUEST=WEIGHT...
      the pool is split among exactly these guests in proportion to the
      weights (within rounding, water-filled at ceilings): prints the
      figures, exits 1 when it is not
  operator_checks.py metrics PREFIX METRICS_RS SCRAPES PROMTOOL REPORT:PROM...
      every pass's metrics file has every metric ksm-balloon writes
      (METRICS_RS: src/metrics.rs, where the names are), says what the
      pass's report says, passes `promtool check metrics`; every scrape of
      node_exporter (SCRAPES: tests/metrics/scrape_record.py's output) served
      one whole file a pass wrote, and every pass's file was served
"""
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "metrics"))
from scrape_check import parse  # noqa: E402

MIB = 1024


def load(path):
    with open(path) as f:
        return json.load(f)


def row(report, prefix, guest):
    rows = [v for v in report["vms"] if v["name"] == prefix + guest]
    if len(rows) != 1:
        sys.exit(f"the report has {len(rows)} rows for {prefix + guest}")
    return rows[0]


def mib(kib):
    return f"{kib / MIB:.1f}"


def show(report, prefix):
    print(f"    pass at {report['at']}: savings {mib(report['savings_kib'])} MiB, lendable "
          f"{mib(report['lendable_kib'])}, pool {mib(report['pool_kib'])}, budget {mib(report['budget_kib'])}, "
          f"resized {report['resized']}, failed {report['failed']}")
    for v in sorted(report["vms"], key=lambda v: v["name"]):
        if not v["name"].startswith(prefix):
            continue
        held = v["held_by_hand"]
        extra = f", held by hand since {held['since']} at {mib(held['size_kib'])} MiB" if held else ""
        print(f"    {v['name'][len(prefix):]:>3}: {v['action']:>6}/{v['reason']:<13} "
              f"{mib(v['current_kib']):>6} -> {mib(v['target_kib']):>6} MiB "
              f"(bonus {mib(v['target_kib'] - v['floor_kib']):>5}, floor {mib(v['floor_kib'])}, "
              f"ceiling {mib(v['ceiling_kib'])}) manage={'yes' if v['manage'] else 'no'} "
              f"weight={v['weight']}{extra}")


def get(report, prefix, guest, path):
    v = row(report, prefix, guest)
    for part in path.split("."):
        v = v[part] if v is not None else None
    print(json.dumps(v) if v is None or isinstance(v, (dict, list, bool)) else v)


def split(report, prefix, specs):
    """The guests given are the pool's only takers, each with a bonus in
    proportion to its weight, except where a ceiling stops it (then the
    others share what it cannot take). Tolerance: the integer division of
    water-filling, 1 KiB per step, times the weights."""
    want = {}
    for s in specs:
        g, w = s.split("=")
        want[g] = int(w)
    bad = []
    slots = [v for v in report["vms"] if v["managed"] and v["action"] != "skip"]
    names = sorted(v["name"][len(prefix):] for v in slots if v["name"].startswith(prefix))
    if names != sorted(want):
        bad.append(f"the pool's takers are {names}, not {sorted(want)}")
    bonus, capped = {}, {}
    for g, w in want.items():
        v = row(report, prefix, g)
        if v["weight"] != w:
            bad.append(f"{g}: weight {v['weight']} in the report, not {w}")
        if v["kept_kib"] or v["squeezed_kib"]:
            bad.append(f"{g}: kept {v['kept_kib']} / squeezed {v['squeezed_kib']} KiB: not a plain split")
        bonus[g] = v["target_kib"] - v["floor_kib"]
        capped[g] = v["target_kib"] >= v["ceiling_kib"]
    free = [g for g in want if not capped[g] and want[g] > 0]
    for g in want:
        if want[g] == 0 and bonus[g] != 0:
            bad.append(f"{g}: weight 0 but a bonus of {bonus[g]} KiB")
    tol = 2 * max(want.values())
    for a in free:
        for b in free:
            if a < b and abs(bonus[a] * want[b] - bonus[b] * want[a]) > tol * max(want[a], want[b]):
                bad.append(f"{a} (weight {want[a]}) has {bonus[a]} KiB, {b} (weight {want[b]}) {bonus[b]} KiB: "
                           f"not in proportion")
    per = {g: bonus[g] / want[g] for g in free}
    for g in want:
        if capped[g] and free and bonus[g] / max(want[g], 1) > max(per.values()) + 1:
            bad.append(f"{g} is at its ceiling with more per unit of weight than the others")
    total = sum(bonus.values())
    if abs(total - report["budget_kib"]) > 4 * len(want):
        bad.append(f"the bonuses add up to {total} KiB, the budget is {report['budget_kib']} KiB")
    figures = ", ".join(f"{g} {mib(bonus[g])} MiB (weight {want[g]}{', at its ceiling' if capped[g] else ''})"
                        for g in sorted(want))
    ratio = ""
    one = [g for g in free if want[g] == 1]
    two = [g for g in free if want[g] == 2]
    if one and two:
        ratio = "; weight 2 / weight 1: " + ", ".join(
            f"{bonus[t] / bonus[o]:.4f}" for t in two for o in one if bonus[o])
    print(f"    split of the budget {mib(report['budget_kib'])} MiB: {figures}; sum {mib(total)}{ratio}")
    for b in bad:
        print(f"    FAIL: {b}")
    return 1 if bad else 0


def metric_names(metrics_rs):
    with open(metrics_rs) as f:
        return sorted(set(re.findall(r'"(ksm_balloon_[a-z_]+)"', f.read())))


def metrics(prefix, metrics_rs, scrapes_path, promtool, pairs):
    names = metric_names(metrics_rs)
    bad = []
    files = []
    for pair in pairs:
        rpath, ppath = pair.split(":")
        report = load(rpath)
        with open(ppath) as f:
            text = f.read()
        series, _ = parse(text)
        files.append(series)
        label = os.path.basename(ppath)
        have = {n for n, _ in series}
        # What KSM costs is written when the pass knew it (issue 21): ksmd's
        # CPU once ksmd is found, the rates from the second pass on,
        # pages_scanned on kernels that have it; each family is there
        # exactly when the report has its figure.
        cost = report["ksm_cost"]
        known = {
            "ksm_balloon_ksmd_cpu_seconds_total": cost["ksmd_cpu_secs"] is not None,
            "ksm_balloon_ksm_pages_scanned_total": report["ksm"].get("pages_scanned") is not None,
            "ksm_balloon_ksmd_cpu_ratio": cost["ksmd_cpu_percent"] is not None,
            "ksm_balloon_savings_per_ksmd_cpu_bytes": (cost["ksmd_cpu_percent"] or 0) > 0,
            # the governor's rate, where KSM's knobs could be read
            "ksm_balloon_ksm_pages_to_scan": report["ksm_governor"]["found"] is not None,
        }
        missing = [n for n in names if n not in have and known.get(n, True)]
        if missing:
            bad.append(f"{label}: no {', '.join(missing)}")
        extra = [n for n, k in known.items() if not k and n in have]
        if extra:
            bad.append(f"{label}: {', '.join(extra)} written, though the report has no such figure")
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        if p.returncode != 0 or p.stdout.strip() or p.stderr.strip():
            bad.append(f"{label}: promtool check metrics: exit {p.returncode}: {(p.stdout + p.stderr).strip()}")
        # What the file says is what the report says.
        want = {
            ("ksm_balloon_pass_success", ()): 1,
            ("ksm_balloon_pass_timestamp_seconds", ()): report["at"],
            ("ksm_balloon_resizes_total", ()): report["counters"]["resizes"],
            ("ksm_balloon_resize_failures_total", ()): report["counters"]["resize_failures"],
            ("ksm_balloon_pool_bytes", ()): report["pool_kib"] * 1024,
            ("ksm_balloon_budget_bytes", ()): report["budget_kib"] * 1024,
            ("ksm_balloon_reserve_bytes", ()): report["reserve_kib"] * 1024,
            ("ksm_balloon_host_memory_available_bytes", ()): report["host"]["available_kib"] * 1024,
            ("ksm_balloon_savings_metric_info", (("metric", report["metric"]),)): 1,
            ("ksm_balloon_lent_bytes", ()): cost["lent_kib"] * 1024,
            ("ksm_balloon_ksm_full_scans_total", ()): report["ksm"]["full_scans"],
        }
        if known["ksm_balloon_ksm_pages_scanned_total"]:
            want[("ksm_balloon_ksm_pages_scanned_total", ())] = report["ksm"]["pages_scanned"]
        if known["ksm_balloon_ksmd_cpu_ratio"]:
            ratio = series.get(("ksm_balloon_ksmd_cpu_ratio", ()))
            if ratio is None or abs(ratio - cost["ksmd_cpu_percent"] / 100) > 1e-9:
                bad.append(f"{label}: ksm_balloon_ksmd_cpu_ratio is {ratio}, the report says "
                           f"{cost['ksmd_cpu_percent']} %")
        vms = [v for v in report["vms"] if v["managed"]]
        for v in vms:
            labels = tuple(sorted((("domain", v["name"]), ("uuid", v["uuid"]))))
            for name, value in (("floor", v["floor_kib"]), ("ceiling", v["ceiling_kib"]),
                                ("current", v["current_kib"]), ("target", v["target_kib"]),
                                ("bonus", max(v["target_kib"] - v["floor_kib"], 0))):
                want[(f"ksm_balloon_vm_{name}_bytes", labels)] = value * 1024
            want[("ksm_balloon_vm_held", labels)] = 1 if v["held_by_hand"] else 0
        for k, value in want.items():
            if series.get(k) != value:
                bad.append(f"{label}: {k[0]}{dict(k[1]) or ''} is {series.get(k)}, the report says {value}")
        vm_series = {dict(lab).get("domain") for n, lab in series if n.startswith("ksm_balloon_vm_")}
        if vm_series != {v["name"] for v in vms}:
            bad.append(f"{label}: VM series for {sorted(vm_series)}, the report manages "
                       f"{sorted(v['name'] for v in vms)}")
    sc = load(scrapes_path)
    canon = [sorted([n, [list(p) for p in lab], val] for (n, lab), val in s.items()) for s in files]
    seen = [0] * len(files)
    nonempty_seen = False
    for s in sc["served"]:
        if not s["series"]:
            if nonempty_seen:
                bad.append(f"scrapes {s['first']}..{s['last']}: no ksm_balloon_ series after a file was served")
            continue
        nonempty_seen = True
        hits = [i for i, c in enumerate(canon) if c == s["series"]]
        if not hits:
            bad.append(f"scrapes {s['first']}..{s['last']} ({s['count']}): {len(s['series'])} series that are "
                       f"no whole file a pass wrote")
        for i in hits:
            seen[i] += s["count"]
    # The matching can fail: a served content with one series less, or one
    # figure changed, matches no file.
    sample = next((s["series"] for s in sc["served"] if s["series"]), None)
    if sample is None:
        bad.append("node_exporter never served the metrics file")
    else:
        changed = [list(x) for x in sample]
        changed[0][2] += 1
        if sample[:-1] in canon or changed in canon:
            bad.append("the matching of scrapes to files cannot tell a torn or changed file")
    unserved = [os.path.basename(p.split(":")[1]) for p, n in zip(pairs, seen) if n == 0]
    if unserved:
        bad.append(f"files never served: {', '.join(unserved)}")
    for what in ("failed", "scrape_errors", "unparsable"):
        if sc[what]:
            bad.append(f"{sc[what]} scrapes {what.replace('_', ' ')}: "
                       f"{sc['first_failure'] if what == 'failed' else sc['first_problem']}")
    print(f"    metrics: {len(files)} files from real passes, each with every one of the {len(names)} metrics ksm-balloon writes that its pass had a figure for "
          f"({min(len(s) for s in files)}-{max(len(s) for s in files)} series), each checked against its "
          f"pass's report and by promtool; node_exporter scraped {sc['scrapes']} times "
          f"({sc['failed']} failed): {len(sc['served'])} distinct contents, every one a whole file a pass wrote; "
          f"each file served {min(seen)}-{max(seen)} times")
    for b in bad:
        print(f"    FAIL: {b}")
    return 1 if bad else 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "show":
        show(load(args[0]), args[1])
        return 0
    if cmd == "get":
        get(load(args[0]), args[1], args[2], args[3])
        return 0
    if cmd == "split":
        return split(load(args[0]), args[1], args[2:])
    if cmd == "metrics":
        return metrics(args[0], args[1], args[2], args[3], args[4:])
    sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    sys.exit(main())
