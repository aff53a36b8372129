#!/usr/bin/env python3
"""Scrapes node_exporter while ksm-balloon's metrics file is rewritten and
checks every scrape: the textfile collector read it without error, every
series of the reference file is there (none missing, none extra), and all
of a scrape's figures come from one generation of the writer (see
tests/metrics_sample: VM current = floor + n, resizes_total = n, pass
timestamp = BASE_TIME + n).

Usage: scrape_check.py URL REFERENCE SECONDS WRITER_PID
Prints one JSON line: scrapes, clean, bad, generations seen, first problem.
Exits 0 when it could judge (the caller reads the JSON), 1 when it could not
(no scrape answered).
"""
import json
import os
import re
import sys
import time
import urllib.request

BASE_TIME = 1_700_000_000
PREFIX = "ksm_balloon_"
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def unescape(v):
    return re.sub(r'\\(.)', lambda m: {'n': '\n'}.get(m.group(1), m.group(1)), v)


def parse(text):
    """{(name, ((label, value), ...)): float} of the ksm_balloon_ series,
    plus the node_textfile_scrape_error value."""
    series, scrape_error = {}, None
    for line in text.splitlines():
        if not line or line.startswith('#'):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError(f"unparsable line {line!r}")
        name, labels, value = m.groups()
        pairs = []
        rest = labels or ''
        while rest:
            lm = LABEL.match(rest)
            if not lm:
                raise ValueError(f"unparsable labels in {line!r}")
            pairs.append((lm.group(1), unescape(lm.group(2))))
            rest = rest[lm.end():]
        if name == 'node_textfile_scrape_error':
            scrape_error = float(value)
        if name.startswith(PREFIX):
            series[(name, tuple(sorted(pairs)))] = float(value)
    return series, scrape_error


def generation(series):
    """The one generation every figure agrees on, or a reason why not."""
    gens = set()
    floors = {k[1]: v for k, v in series.items() if k[0] == 'ksm_balloon_vm_floor_bytes'}
    for (name, labels), v in series.items():
        if name == 'ksm_balloon_vm_current_bytes':
            gens.add(int((v - floors[labels]) // 1024))
        elif name == 'ksm_balloon_resizes_total':
            gens.add(int(v))
        elif name == 'ksm_balloon_pass_timestamp_seconds':
            gens.add(int(v) - BASE_TIME)
    if len(gens) != 1:
        return None, f"figures from generations {sorted(gens)} in one scrape"
    return gens.pop(), None


def main():
    url, reference, seconds, writer = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    with open(reference, encoding='utf-8') as f:
        want, _ = parse(f.read())
    want_keys = set(want)
    deadline = time.monotonic() + seconds
    scrapes = clean = 0
    bad, gens, first = 0, set(), None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                text = r.read().decode('utf-8')
        except OSError as e:
            bad += 1
            first = first or f"scrape failed: {e}"
            continue
        scrapes += 1
        problem = None
        try:
            got, err = parse(text)
        except ValueError as e:
            got, err, problem = {}, None, str(e)
        if problem is None and err != 0:
            problem = f"node_textfile_scrape_error is {err}"
        if problem is None and set(got) != want_keys:
            missing = sorted(want_keys - set(got))
            extra = sorted(set(got) - want_keys)
            problem = f"{len(missing)} series missing (e.g. {missing[:1]}), {len(extra)} extra (e.g. {extra[:1]})"
        if problem is None:
            g, problem = generation(got)
            if g is not None:
                gens.add(g)
        if problem:
            bad += 1
            first = first or problem
        else:
            clean += 1
        # Stop once the writer is done and one scrape saw its last file.
        try:
            os.kill(writer, 0)
        except ProcessLookupError:
            if scrapes > 0:
                break
    print(json.dumps({"scrapes": scrapes, "clean": clean, "bad": bad,
                      "generations": len(gens), "series": len(want_keys),
                      "first_problem": first}))
    return 0 if scrapes > 0 else 1


if __name__ == '__main__':
    sys.exit(main())
