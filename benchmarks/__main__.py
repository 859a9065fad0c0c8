"""Run the benchmark suites: ``python -m benchmarks --suite quick|full``.

The quick suite (< 3 minutes on 2 CPU cores) runs every protocol in its smoke mode: it checks that the
scripts work, not what they measure, and writes everything under ``benchmarks/results/quick/``. The full suite
(< 30 minutes) measures the figures and writes them under ``benchmarks/results/latest/``; with ``--readme`` it
publishes them: ``benchmarks/results/<protocol>.json``, ``summary-full.json``, ``full.md``, the suite's block of
``benchmarks/README.md`` and its FitNets and early-exit sections, leaving the rest of that file untouched. Without
``--readme`` no tracked file changes (``results/quick/`` and ``results/latest/`` are git-ignored); an unpublished
full run writes the FitNets and early-exit JSON under ``results/latest/suite/``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import RESULTS_DIR, BenchmarkSkipped, machine_info, write_json
from benchmarks.report import publish_sections, readme_block, render, update_readme

README = Path(__file__).resolve().parent / "README.md"
#: Protocol name -> module. Protocol 1 comes first: every later MNIST protocol (4, 5, ensemble, logit_losses,
#: early_exit_teacher, cache_scaling) reuses its teachers in the same process (``benchmarks._mnist.teacher_for``), and
#: logit_losses reuses ensemble's plain and single-teacher student runs (``benchmarks._selection.run_student``).
PROTOCOLS: dict[str, str] = {
    "hinton_mnist": "benchmarks.hinton_mnist",
    "caching": "benchmarks.caching",
    "torchdistill": "benchmarks.torchdistill_peer",
    "overhead": "benchmarks.overhead",
    "digits": "benchmarks.digits",
    "ensemble": "benchmarks.ensemble",
    "logit_losses": "benchmarks.logit_losses",
    "early_exit_teacher": "benchmarks.early_exit_teacher",
    "cache_scaling": "benchmarks.cache_scaling",
    "export": "benchmarks.export",
    "fitnets": "benchmarks.fitnets",
    "early_exit": "benchmarks.early_exit",
}
#: Protocols with a README section of their own (rewritten by ``--readme``, not part of the suite's block).
EXTERNAL = ("fitnets", "early_exit")


def run_protocol(name: str, quick: bool, out_dir: Path, threads: int, publish: bool = False) -> dict[str, Any]:
    """Run one protocol; never raises: a skip or a failure is recorded with its reason.

    An unpublished full run writes the EXTERNAL protocols' JSON under ``out_dir/suite/``.
    """
    module_name = PROTOCOLS[name]
    start, start_cpu = time.perf_counter(), time.process_time()
    entry: dict[str, Any] = {"status": "ok", "module": module_name}
    try:
        if importlib.util.find_spec(module_name) is None:
            raise BenchmarkSkipped(f"{module_name} is not in this checkout")
        module = importlib.import_module(module_name)
        separate = name in EXTERNAL and not quick and not publish
        kwargs: dict[str, Any] = {"quick": quick, "out_dir": Path(out_dir) / "suite" if separate else out_dir}
        if "threads" in inspect.signature(module.run).parameters:
            kwargs["threads"] = threads
        result = module.run(**kwargs)
        if isinstance(result, dict) and "skipped" in result:  # the FitNets script's way of skipping
            entry.update(status="skipped", reason=str(result["skipped"]))
        else:
            entry["result"] = result
        if name in EXTERNAL:
            entry.update(external=True, result_file=str(Path(kwargs["out_dir"]) / f"{name}.json"))
    except BenchmarkSkipped as skip:
        entry.update(status="skipped", reason=str(skip))
    except Exception as err:
        entry.update(status="failed", reason=f"{type(err).__name__}: {err}"[:400], traceback=traceback.format_exc())
    finally:
        torch.set_num_threads(threads)  # a protocol may have changed it
    entry["seconds"], entry["cpu_seconds"] = time.perf_counter() - start, time.process_time() - start_cpu
    return entry


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
    readme = parser.add_mutually_exclusive_group()
    readme.add_argument("--readme", dest="readme", action="store_true", default=None,
                        help="publish: write the figures in benchmarks/results/ and update benchmarks/README.md "
                             "(default: off; the published files are tracked by git)")
    readme.add_argument("--no-readme", dest="readme", action="store_false")
    args = parser.parse_args(argv)
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
    protocols: dict[str, Any] = {}
    for name in names:
        print(f"[benchmarks] {name} ({args.suite}) ...", flush=True)
        protocols[name] = entry = run_protocol(name, quick, args.out_dir, args.threads, publish=bool(args.readme))
        print(f"[benchmarks] {name}: {entry['status']} in {entry['seconds']:.0f} s ({entry['cpu_seconds']:.0f} s CPU)"
              + (f" ({entry['reason']})" if entry.get("reason") else ""), flush=True)
        if entry["status"] == "failed":
            print(entry["traceback"], file=sys.stderr, flush=True)
    summary = {"suite": args.suite, "command": command.strip(), "threads": args.threads, "machine": machine,
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
