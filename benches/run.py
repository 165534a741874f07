#!/usr/bin/env python3
"""make bench: every benchmark of managedbot in one run, into docs/benchmarks.md.

Parts (each can be run alone, see --only, or by its own command):
  router      benches/router.py: the router against nginx and the bare backend
  table       cargo bench --bench route_table: lookup + token check at 10, 10k, 100k routes
  controller  cargo bench --bench controller: 1,000 and 10,000 bots against the API server,
              and the router's memory with 100,000 routes
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("router", "table", "controller")


def progress(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def first_line(*command):
    try:
        out = subprocess.run(command, capture_output=True, text=True)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def machine():
    """Cores, memory, kernel and the versions of what was measured."""
    with open("/proc/meminfo") as f:
        memory_kib = int(f.readline().split()[1])
    oha = shutil.which("oha") or os.path.expanduser("~/.cargo/bin/oha")
    return (f"{os.cpu_count()} cores, {memory_kib / 1048576:.0f} GiB, Linux {os.uname().release}; "
            f"{first_line('rustc', '--version')}, {first_line('/usr/sbin/nginx', '-v')}, "
            f"{first_line(oha, '--version')}, Kubernetes v1.37.2 and etcd v3.7.0 (tests/controlplane)")


def route_table(out_dir):
    subprocess.run(["cargo", "bench", "--locked", "--bench", "route_table"], cwd=ROOT, check=True)
    lines = ["## The route table", "",
             "Per request: SHA-256 of the path secret, the lookup, the constant-time token check "
             "(criterion, median of its samples).", "",
             "| routes | ns per request |", "| ---: | ---: |"]
    base = os.path.join(ROOT, "target", "criterion", "route_table")
    figures = {}
    for n in (10, 10_000, 100_000):
        with open(os.path.join(base, str(n), "new", "estimates.json")) as f:
            figures[n] = json.load(f)["median"]["point_estimate"]
        lines.append(f"| {n:,} | {figures[n]:.0f} |")
    lines += ["", f"100,000 routes cost {figures[100_000] / figures[10]:.2f}× what 10 do.", ""]
    return "\n".join(lines)


HEADINGS = {"router": "## The router", "table": "## The route table", "controller": "## The controller"}


def merged(path, parts, sections):
    """The sections just measured, with the other parts' sections of the
    existing report kept (a rerun of one part keeps the rest)."""
    fresh = dict(zip([p for p in PARTS if p in parts], sections))
    old = {}
    try:
        text = open(path).read()
    except OSError:
        text = ""
    chunks = text.split("\n## ")
    for chunk in chunks[1:]:
        chunk = "## " + chunk
        for part, heading in HEADINGS.items():
            if chunk.startswith(heading):
                old[part] = chunk
    return [fresh.get(part) or old[part] for part in PARTS if part in fresh or part in old]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts to run")
    parser.add_argument("--quick", action="store_true", help="small sizes and one round: a smoke run")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    args = parser.parse_args()
    parts = [p for p in args.only.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown parts {sorted(unknown)}; the parts are {', '.join(PARTS)}")
    out_dir = os.path.join(ROOT, "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    sections = []
    started = datetime.datetime.now(datetime.timezone.utc)
    if "router" in parts:
        progress("the router against nginx and the bare backend (about 6 minutes)")
        out = os.path.join(out_dir, "router.md")
        extra = ["--rounds", "1", "--duration", "3"] if args.quick else []
        subprocess.run([sys.executable, os.path.join(ROOT, "benches", "router.py"), "--out", out, *extra],
                       check=True, stdout=subprocess.DEVNULL)
        sections.append(open(out).read())
    if "table" in parts:
        progress("the route table (criterion, about 2 minutes)")
        sections.append(route_table(out_dir))
    if "controller" in parts:
        progress("the controller against the API server, and the router's memory (10-20 minutes)")
        out = os.path.join(out_dir, "controller.md")
        extra = ["--bots", "100", "--more-bots", "300", "--routes", "2000", "--steady", "10s"] if args.quick else []
        subprocess.run(["cargo", "bench", "--locked", "--bench", "controller", "--", "--out", out, *extra],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        sections.append(open(out).read())
    header = "\n".join([
        "# Benchmarks",
        "",
        f"Written by `make bench`. Machine: {machine()}. Each part says when and at which commit it",
        "was measured.",
        "",
        "These machines are shared and noisy: absolute figures drift from run to run, the ratios",
        "measured within one run hold. No figure here is asserted by the test suite.",
        "",
        "Rerun one part: `python3 benches/run.py --only router` (or `table`, `controller`);",
        "`python3 benches/router.py --help` and `cargo bench --bench controller -- --help` list each",
        "part's knobs, and `python3 benches/router.py --hold` keeps the router's bed up for profiling.",
        "",
    ])
    stamp = f"_Measured at managedbot {first_line('git', '-C', ROOT, 'rev-parse', '--short', 'HEAD')}, {started:%Y-%m-%d %H:%M} UTC._\n"
    sections = [section.rstrip() + "\n\n" + stamp for section in sections]
    # Read before the file is opened for writing, which empties it.
    report = header + "\n" + "\n".join(s.rstrip() + "\n" for s in merged(args.out, parts, sections))
    with open(args.out, "w") as f:
        f.write(report)
    progress(f"wrote {args.out}")


if __name__ == "__main__":
    main()
