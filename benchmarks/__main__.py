"""Run the benchmark suites: ``python -m benchmarks --suite quick|full``.

The quick suite (< 3 minutes on 2 CPU cores) runs every protocol in its smoke mode: it checks that the
scripts work, not what they measure, and writes everything under ``benchmarks/results/quick/``. The full suite
(< 30 minutes) measures the figures and writes them under ``benchmarks/results/latest/``; with ``--readme`` it
publishes them: ``benchmarks/results/<protocol>.json``, ``summary-full.json``, ``full.md``, the suite's block of
``benchmarks/README.md`` and its FitNets and early-exit sections, leaving the rest of that file untouched. Without
``--readme`` no tracked file changes (``results/quick/`` and ``results/latest/`` are git-ignored); an unpublished
full run writes the FitNets and early-exit JSON under ``results/latest/suite/``.

The accuracy protocols run two at a time in worker processes (``--jobs``), the timing protocols alone afterwards; see
:mod:`benchmarks._suite`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks._common import RESULTS_DIR, machine_info, write_json
from benchmarks._suite import EXTERNAL, LANES, PROTOCOLS, run_protocol, run_suite
from benchmarks.report import publish_sections, readme_block, render, update_readme

README = Path(__file__).resolve().parent / "README.md"
__all__ = ["EXTERNAL", "LANES", "PROTOCOLS", "main", "run_protocol"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["quick", "full"], default="quick")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {list(PROTOCOLS)}")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="default: benchmarks/results/quick (quick suite), benchmarks/results/latest (full "
                             "suite), benchmarks/results (full suite with --readme)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core machine more threads make "
                             "timings erratic)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="accuracy protocols run in this many parallel lanes (one process, one thread each); "
                             "the timing protocols always run alone afterwards (default 2: the 2-core machine the "
                             "suite is sized for; 1 runs everything one after the other)")
    readme = parser.add_mutually_exclusive_group()
    readme.add_argument("--readme", dest="readme", action="store_true", default=None,
                        help="publish: write the figures in benchmarks/results/ and update benchmarks/README.md "
                             "(default: off; the published files are tracked by git)")
    readme.add_argument("--no-readme", dest="readme", action="store_false")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be a positive integer, got {args.jobs}")
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(PROTOCOLS)
    unknown = sorted(set(names) - set(PROTOCOLS))
    if unknown:
        parser.error(f"unknown protocol(s) {unknown}; choose from {list(PROTOCOLS)}")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("COMET_DISABLE_AUTO_LOGGING", "1")
    quick = args.suite == "quick"
    if args.out_dir is None:
        args.out_dir = RESULTS_DIR / "quick" if quick else RESULTS_DIR if args.readme else RESULTS_DIR / "latest"
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    machine, start = machine_info(), time.perf_counter()
    protocols, plan = run_suite(names, quick, args.out_dir, args.threads, bool(args.readme), args.jobs)
    summary = {"suite": args.suite, "command": command.strip(), "threads": args.threads, "schedule": plan,
               "machine": machine,
               "load_average_end": machine_info()["load_average"], "seconds": time.perf_counter() - start,
               "protocols": protocols}
    write_json(args.out_dir, f"summary-{args.suite}", summary)
    markdown = render(summary)
    (Path(args.out_dir) / f"{args.suite}.md").write_text(markdown, encoding="utf-8")
    if args.readme:
        update_readme(README, readme_block(summary))
        if not quick:
            print(f"[benchmarks] README sections rewritten: {publish_sections(README, summary)}", flush=True)
    print(markdown)
    print(f"[benchmarks] {args.suite} suite done in {summary['seconds'] / 60:.1f} min", flush=True)
    return 1 if any(e["status"] == "failed" for e in protocols.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
