#!/usr/bin/env python3
"""Scrapes node_exporter again and again while real `ksm-balloon run`
passes rewrite the metrics file, and records what each scrape served of it,
for tests/realstack/operator.sh to hold against the files the passes wrote.

Usage: scrape_record.py URL STOPFILE OUT.json [INTERVAL_SECONDS]

Scrapes URL (5 s timeout per request) every INTERVAL seconds (default
0.05) until STOPFILE exists. After every scrape it rewrites OUT.json.progress
with the number of scrapes so far (the caller waits on it). At the end it
writes OUT.json:
  scrapes         scrapes that answered
  failed          scrapes that did not (HTTP or connection errors)
  first_failure   the first such error
  scrape_errors   scrapes whose node_textfile_scrape_error was not 0
  unparsable      scrapes whose text did not parse
  first_problem   the first unparsable or scrape-error case
  served          one entry per distinct set of ksm_balloon_ series served,
                  in order of first sight: {"series": [[name, labels, value],
                  ...], "count", "first", "last"} (scrape indices)
Exit 0 when at least one scrape answered.
"""
import json
import os
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scrape_check import parse  # noqa: E402  (the same parser, one copy)


def main():
    url, stopfile, out = sys.argv[1], sys.argv[2], sys.argv[3]
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.05
    scrapes = failed = scrape_errors = unparsable = 0
    first_failure = first_problem = None
    served, index = [], {}
    while not os.path.exists(stopfile):
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode('utf-8')
        except OSError as e:
            failed += 1
            first_failure = first_failure or str(e)
            time.sleep(interval)
            continue
        n = scrapes
        scrapes += 1
        try:
            series, err = parse(text)
        except ValueError as e:
            unparsable += 1
            first_problem = first_problem or f"scrape {n}: {e}"
            continue
        if err != 0:
            scrape_errors += 1
            first_problem = first_problem or f"scrape {n}: node_textfile_scrape_error is {err}"
        key = json.dumps(sorted([name, list(map(list, labels)), value]
                                for (name, labels), value in series.items()))
        if key not in index:
            index[key] = len(served)
            served.append({"series": json.loads(key), "count": 0, "first": n, "last": n})
        s = served[index[key]]
        s["count"] += 1
        s["last"] = n
        with open(out + ".progress.tmp", "w") as f:
            f.write(f"{scrapes}\n")
        os.replace(out + ".progress.tmp", out + ".progress")
        time.sleep(interval)
    with open(out, "w") as f:
        json.dump({"scrapes": scrapes, "failed": failed, "first_failure": first_failure,
                   "scrape_errors": scrape_errors, "unparsable": unparsable,
                   "first_problem": first_problem, "served": served}, f)
    return 0 if scrapes else 1


if __name__ == '__main__':
    sys.exit(main())
