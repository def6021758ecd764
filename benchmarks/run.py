"""Run every benchmark under ``benchmarks/*/run.py`` and collect one results table.

Each benchmark module exposes ``run(quick: bool) -> dict`` and writes its own JSON and markdown
table through ``benchmarks.common.write_results``: ``benchmarks/results/<name>.{json,md}`` for a
full run, ``benchmarks/results/quick/`` for a ``--quick`` smoke run (marked quick inside, never
over the committed numbers). ``benchmarks/README.md`` is only ever generated from the stored
full-run tables (:func:`readme_text`), so it cannot disagree with ``results/``; a test runs
``--collect --check``.

    python -m benchmarks.run [--quick] [--only samplers,nn]
    python -m benchmarks.run --collect            # rebuild benchmarks/README.md from results/
    python -m benchmarks.run --collect --check    # exit 1 if README.md is stale
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from polydiff.core.fileio import atomic_write_text

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE / "README.md"
HEADER = (
    "# polydiff benchmarks\n\nTables written by each benchmark's last full run "
    "(`make bench`, or `python -m benchmarks.run --only <name>`), collected by "
    "`python -m benchmarks.run --collect` (generated: do not edit by hand; a test checks it "
    "against `benchmarks/results/`). Every comparison is side by side in one run and reported "
    "as a ratio; each table states the machine and conditions it ran under. Smoke runs "
    "(`--quick`) write to `benchmarks/results/quick/` and never appear here.\n\n"
)


def discover() -> list[str]:
    """Benchmark names: the folders holding a ``run.py``."""
    return sorted(p.parent.name for p in HERE.glob("*/run.py"))


def readme_text() -> str:
    """``benchmarks/README.md`` as the stored full-run tables make it."""
    sections = []
    for name in discover():
        md_file = RESULTS / f"{name}.md"
        body = md_file.read_text().strip() if md_file.exists() else "(not run yet: `make bench`)"
        sections.append(f"## {name}\n\n{body}\n")
    return HEADER + "\n".join(sections)


def collect(check: bool = False) -> int:
    """Rebuild ``benchmarks/README.md`` from the stored tables (``check``: only compare)."""
    text = readme_text()
    if check:
        if not README.exists() or README.read_text() != text:
            print(
                f"{README} disagrees with {RESULTS}/*.md: run `python -m benchmarks.run --collect`",
                file=sys.stderr,
            )
            return 1
        print(f"{README} matches {RESULTS}/*.md")
        return 0
    atomic_write_text(README, text)
    print(f"wrote {README}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", default="", help="comma-separated benchmark names")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="run nothing: rebuild benchmarks/README.md from the stored results/*.md",
    )
    parser.add_argument(
        "--check", action="store_true", help="with --collect: only check README.md is current"
    )
    args = parser.parse_args(argv)
    if args.collect or args.check:
        return collect(check=args.check)
    from benchmarks.common import machine, results_dir  # torch: only when benchmarks run

    names = discover()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - set(names)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; available: {names}")
        names = [n for n in names if n in wanted]
    out = results_dir(args.quick)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    failed, seconds = [], {}
    for name in names:
        print(f"== benchmark {name} ==", flush=True)
        start = time.perf_counter()
        try:
            importlib.import_module(f"benchmarks.{name}.run").run(quick=args.quick)
        except Exception:  # keep going: one broken benchmark must not hide the others
            traceback.print_exc()
            failed.append(name)
            continue
        seconds[name] = round(time.perf_counter() - start, 1)
    summary = {"machine": info, "quick": args.quick, "ran": names, "failed": failed,
               "seconds": seconds}  # fmt: skip
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    if not args.quick:
        collect()
    if failed:
        print(f"failed benchmarks: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
