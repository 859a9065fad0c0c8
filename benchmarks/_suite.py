"""How ``python -m benchmarks`` runs its protocols: accuracy lanes in parallel, then the timings alone.

The machine the suite is sized for has 2 cores and every protocol runs on 1 torch thread, so one protocol at a
time leaves a core idle. Protocols whose figures are *accuracies* (and exit shares, gaps closed) do not change
with the machine's load: at 1 thread PyTorch's CPU kernels give the same numbers whatever else runs. They run in
:data:`LANES`, one process per lane and ``jobs`` lanes at a time; the protocols of a lane run in order in one
process, so the in-process memos still hold (``logit_losses`` reuses ``ensemble``'s student runs). The teachers of
protocol 1 are shared across processes through a folder (:data:`benchmarks._mnist.TEACHER_DIR_ENV`): the first
process that needs one trains it, the others wait for it and load it.

Every other protocol measures *time* (speed-ups, overheads, latency), which a second busy core would distort:
those run afterwards in the suite's own process, one at a time, with nothing else running. The epoch times that
the accuracy protocols also record were taken beside another lane (their JSON says so via the load average).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from benchmarks import _mnist
from benchmarks._common import BenchmarkSkipped

#: Protocol name -> module. Protocol 1 comes first: every later MNIST protocol (4, 5, ensemble, logit_losses,
#: early_exit_teacher, cache_scaling) reuses its teachers (``benchmarks._mnist.teacher_for``), and logit_losses
#: reuses ensemble's plain and single-teacher student runs in the same process (``benchmarks._selection``).
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
#: The accuracy protocols in lanes, longest first (full suite: hinton_mnist about 11 min, fitnets 8, ensemble +
#: logit_losses 7, the others 2-3). ``jobs`` worker processes take the lanes in this order, each the next one as
#: soon as it is free; a lane's protocols run in order in one process (logit_losses reuses ensemble's runs), and
#: a worker keeps its memoised teachers from one lane to the next.
LANES: tuple[tuple[str, ...], ...] = (("hinton_mnist",), ("fitnets",), ("ensemble", "logit_losses"), ("digits",),
                                      ("early_exit_teacher",))


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


def run_lane(names: list[str], quick: bool, out_dir: Path, threads: int, publish: bool) -> dict[str, dict[str, Any]]:
    """Run ``names`` in order in this process, announcing each before and after."""
    torch.set_num_threads(threads)
    entries: dict[str, dict[str, Any]] = {}
    for name in names:
        announce(name, None)
        entries[name] = entry = run_protocol(name, quick, out_dir, threads, publish=publish)
        announce(name, entry)
    return entries


def announce(name: str, entry: dict[str, Any] | None) -> None:
    """The suite's progress lines (a failure's traceback goes to stderr)."""
    if entry is None:
        print(f"[benchmarks] {name} ...", flush=True)
        return
    print(f"[benchmarks] {name}: {entry['status']} in {entry['seconds']:.0f} s ({entry['cpu_seconds']:.0f} s CPU)"
          + (f" ({entry['reason']})" if entry.get("reason") else ""), flush=True)
    if entry["status"] == "failed":
        print(entry["traceback"], file=sys.stderr, flush=True)


def schedule(names: list[str], jobs: int) -> dict[str, Any]:
    """``{"lanes": [[...], ...], "alone": [...]}``: the lanes to run ``jobs`` at a time, then the rest one by one.

    With ``jobs == 1`` (or fewer than two non-empty lanes) everything runs alone, in :data:`PROTOCOLS` order.
    """
    lanes = [[n for n in lane if n in names] for lane in LANES]
    lanes = [lane for lane in lanes if lane]
    if jobs <= 1 or len(lanes) < 2:
        return {"jobs": 1, "lanes": [], "alone": [n for n in PROTOCOLS if n in names]}
    laned = {n for lane in lanes for n in lane}
    return {"jobs": min(jobs, len(lanes)), "lanes": lanes, "alone": [n for n in PROTOCOLS if n in names and n not in laned]}


def run_suite(names: list[str], quick: bool, out_dir: Path, threads: int, publish: bool, jobs: int
              ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run ``names`` as :func:`schedule` lays them out; returns the entries (in :data:`PROTOCOLS` order) and the plan.

    The lanes' processes share one teachers folder (removed at the end) with this process, whose timing protocols
    then load those teachers instead of training them again.
    """
    plan = schedule(names, jobs)
    entries: dict[str, dict[str, Any]] = {}
    previous = os.environ.get(_mnist.TEACHER_DIR_ENV)
    with tempfile.TemporaryDirectory(prefix="kd-bench-teachers-") as shared:
        os.environ[_mnist.TEACHER_DIR_ENV] = previous or shared
        try:
            if plan["lanes"]:
                context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
                with ProcessPoolExecutor(max_workers=plan["jobs"], mp_context=context) as pool:
                    futures = [pool.submit(run_lane, lane, quick, out_dir, threads, publish) for lane in plan["lanes"]]
                    for lane, future in zip(plan["lanes"], futures):
                        try:
                            entries.update(future.result())
                        except Exception as err:  # the lane's process died: its protocols failed, the rest go on
                            for name in lane:
                                entries[name] = {"status": "failed", "module": PROTOCOLS[name], "seconds": 0.0,
                                                 "cpu_seconds": 0.0, "reason": f"its lane's process failed: "
                                                 f"{type(err).__name__}: {err}"[:400],
                                                 "traceback": traceback.format_exc()}
            entries.update(run_lane(plan["alone"], quick, out_dir, threads, publish))
        finally:
            if previous is None:
                os.environ.pop(_mnist.TEACHER_DIR_ENV, None)
            else:
                os.environ[_mnist.TEACHER_DIR_ENV] = previous
    return {n: entries[n] for n in PROTOCOLS if n in entries}, plan
