"""Markdown tables from the protocols' JSON results, and the marker-delimited blocks in ``benchmarks/README.md``.

The text between :data:`START` and :data:`END` belongs to the suite: protocols 1-5 (their renderers below), then
every other protocol whose module has a ``markdown(result)`` (its ``TITLE``, or its docstring's first line, heads
the section). The targets table shows this module's rows for protocols 1-5 plus every result's own
``result["targets"]`` rows. The FitNets and early-exit sections are theirs: :func:`publish_sections` rewrites them
after a published suite run (FitNets through ``benchmarks.fitnets.write_readme``, early exit between its own
``<!-- kd-bench:early_exit:start/end -->`` markers); everything else in the README is kept byte for byte.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._publish import (  # noqa: F401  (re-exported: the suite and tests use them from here)
    EARLY_EXIT_END,
    EARLY_EXIT_START,
    _load_result,
    publish_sections,
    update_marked,
)
from kd_toolkit._io import write_text

START, END = "<!-- kd-bench:start -->", "<!-- kd-bench:end -->"
STUDENT_LABELS = {"mnist_student_800": "784-800-800-10", "mnist_student_30": "784-30-30-10"}


def _pct(stats: dict[str, Any] | None, digits: int = 2) -> str:
    if not stats:
        return "n/a"
    return f"{stats['mean'] * 100:.{digits}f} ± {stats['std'] * 100:.{digits}f}"


def _share(stats: dict[str, Any] | None) -> str:
    return "n/a" if not stats else f"{stats['mean'] * 100:.0f}% ± {stats['std'] * 100:.0f}%"


def _relative(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[parts.index("benchmarks"):]) if "benchmarks" in parts else path


def _weights(weights: dict[str, float]) -> str:
    return " + ".join(f"{w:g} × {name}" for name, w in weights.items())


def _s(value: float, digits: int = 3) -> str:
    return f"{value:.{digits}f}"


def hinton_table(r: dict[str, Any]) -> str:
    t, d = r["teacher"], r["data"]
    lines = [
        f"Teacher 784-1200-1200-10 (dropout, ±2-px jitter, {r['config']['teacher_epochs']} epochs): "
        f"**{_pct(t['acc'])}%** test accuracy ({t['acc']['n']} seeds). Train/validation/test "
        f"{d['train']}/{d['val']}/{d['test']}; Adam {r['recipe']['lr']}, {r['recipe']['schedule']}, batch "
        f"{r['recipe']['batch_size']}; kd_loss carries the T² factor. Temperature, then loss weights, chosen by mean "
        "validation accuracy over each student's search seeds; the test split never takes part in a choice. Accuracy after the last epoch, mean ± std over seeds, in %; gap "
        "closed = (KD − plain) / (teacher − plain) per seed, then averaged.",
        "",
        "| Student | epochs | search seeds | chosen on validation | plain | KD (chosen) | gap closed | per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in r["students"].items():
        c, plain = s["chosen"], s["arms"]["plain"]
        per_seed = ", ".join(f"{v * 100:.0f}%" for v in (c.get("gap_closed_per_seed") or {}).values()
                             if v is not None)
        seeds = ", ".join(map(str, s["search_seeds"]))
        lines.append(f"| {STUDENT_LABELS.get(name, name)} | {s['epochs']} | {seeds} | T={c['temperature']:g}, "
                     f"{_weights(c['kd_weights'])} | {_pct(plain['acc'])} | {_pct(c['acc'])} | "
                     f"**{_share(c.get('gap_closed'))}** | {per_seed} |")
    lines += ["", "Every configuration tried. Its **test** figures are shown for completeness and were *not* used for "
              "choosing; the mean validation accuracy over the search seeds is what chose:", "",
              "| Student | arm | validation, search seeds | seeds run | test | gap closed (test) |",
              "|---|---|---|---|---|---|"]
    for name, s in r["students"].items():
        for arm, a in s["arms"].items():
            mark = " (chosen)" if arm == s["chosen"]["arm"] else ""
            label = "plain" if a.get("temperature") is None else (
                f"KD T={a['temperature']:g}, {_weights(r['recipe']['kd_weights'][a['weights']])}")
            lines.append(f"| {STUDENT_LABELS.get(name, name)} | {label}{mark} | "
                         f"{a.get('val_search', a['val']['mean']) * 100:.2f} | {len(a['seeds'])} | {_pct(a['acc'])} | "
                         f"{_share(a.get('gap_closed')) if arm != 'plain' else '—'} |")
    p = r["paper"]
    lines += ["", f"Paper ({p['source']}): test errors {p['test_errors']['teacher']} / "
              f"{p['test_errors']['student_plain']} / {p['test_errors']['student_kd']} (teacher / plain / KD), "
              f"{p['gap_closed'] * 100:.0f}% of the gap closed."]
    return "\n".join(lines)


def digits_table(r: dict[str, Any]) -> str:
    acc = r["acc"]
    n = acc["teacher"]["n"]
    return "\n".join([
        f"8x8 digits, {n} seeds (split, init and order vary with the seed); teacher {r['config']['teacher_epochs']} "
        f"epochs, students {r['config']['student_epochs']}; KD {_weights(r['recipe']['kd_weights'])} at "
        f"T={r['recipe']['temperature']:g}; Adam {r['recipe']['lr']:g}, {r['recipe']['schedule']}, batch "
        f"{r['recipe']['batch_size']}; test accuracy after the last epoch (%).",
        "",
        "| teacher 64-256-256-10 | plain student 64-16-10 | KD student | KD − plain (points) | gap closed | seeds KD > plain |",
        "|---|---|---|---|---|---|",
        f"| {_pct(acc['teacher'])} | {_pct(acc['plain'])} | {_pct(acc['kd'])} | {_pct(r['kd_minus_plain'])} | "
        f"{_share(r['gap_closed'])} | {r['seeds_kd_better']}/{n} |",
    ])


def overhead_table(r: dict[str, Any]) -> str:
    lines = [
        "Seconds per epoch: median over interleaved repeats of the steady-state epoch (median gap between epoch "
        "ends). Ratios are medians of per-repeat ratios; CPU = process CPU time (robust to other load).",
        "",
        "| case | steps/epoch (plain ms/step) | plain loop | Lightning floor | kd_toolkit | kd_toolkit / plain (wall) "
        "| (CPU) | Lightning floor / plain | kd_toolkit / floor | kd_toolkit − plain (s/epoch) "
        "| losses agree to 5 dp (max diff) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["cases"]:
        a = c["arms"]
        student = STUDENT_LABELS.get(c["student"], c["student"])
        lines.append(
            f"| {c['case']} ({student}, {'cached' if c['cached_teacher'] else 'live'} teacher) | "
            f"{c['steps_per_epoch']} ({a['plain']['ms_per_step']:.2f}) | {_s(a['plain']['epoch_s_median'])} | "
            f"{_s(a['lightning']['epoch_s_median'])} | {_s(a['kd_toolkit']['epoch_s_median'])} | "
            f"**{c['ratio_kd_toolkit_vs_plain']:.3f}x** | {c['cpu_ratio_kd_toolkit_vs_plain']:.3f}x | "
            f"{c['ratio_lightning_vs_plain']:.3f}x | "
            f"{a['kd_toolkit']['epoch_s_median'] / a['lightning']['epoch_s_median']:.3f}x | "
            f"{c['overhead_s_per_epoch']:+.3f} | {'yes' if c['losses_agree_5dp'] else 'NO'} "
            f"({max(c['max_step_loss_diff'], c['max_epoch_loss_diff']):.1e}) |")
    w = r.get("whole_run")
    if w:
        k, p = w["arms"]["kd_toolkit"], w["arms"]["plain"]
        lines += [
            "", f"**Whole run** ({w['epochs']} epochs, {w['threads']} torch thread(s), {w['n_train']} training / {w['n_val']} "
            f"validation images, {w['repeats']} interleaved repeat(s) after {w.get('warmup_rounds', 1)} warm-up round(s)): one "
            "`KnowledgeDistillationTraining(...).fit()` with its defaults (sanity check, model summary, validation "
            "every epoch, best and last checkpoints, `metrics.csv`; progress bar off, `track_grad_norm=None`) from the "
            "constructor call to `fit`'s return, against a plain loop that validates, `torch.save`s a checkpoint and "
            "writes a CSV row every epoch.", "",
            "| plain loop (s) | kd_toolkit (s) | kd_toolkit / plain (wall) | (CPU) | checkpoint writes per run "
            "| median write (ms) |", "|---|---|---|---|---|---|",
            f"| {p['wall_s_median']:.2f} | {k['wall_s_median']:.2f} | **{w['ratio']:.3f}x** | {w['cpu_ratio']:.3f}x | "
            f"{k['checkpoint_writes_per_run']:.0f} | {k['checkpoint_write_s_median'] * 1e3:.1f} |", "",
            "Where the difference goes (kd_toolkit − plain loop, medians; per run or per epoch):", "",
            "| phase | per | wall (ms) | CPU (ms) |", "|---|---|---|---|",
        ]
        lines += [f"| {v['what']} | {v['per']} | {v['wall_s'] * 1e3:+.1f} | {v['cpu_s'] * 1e3:+.1f} |"
                  for v in w["fixed_costs"].values()]
    return "\n".join(lines)


def caching_table(r: dict[str, Any]) -> str:
    a = r["arms"]
    return "\n".join([
        f"Protocol 1's KD run (784-800-800-10 student, T={r['config']['temperature']:g}), {r['config']['epochs']} "
        f"epochs x {r['config']['repeats']} interleaved repeats.",
        "",
        "| live teacher (s/epoch) | cached (s/epoch) | speed-up (wall) | (CPU) | incl. cache build | FLOP estimate "
        "| losses equal to rounding (max rel. step diff) |",
        "|---|---|---|---|---|---|---|",
        f"| {_s(a['live']['epoch_s_median'])} | {_s(a['cached']['epoch_s_median'])} | **{r['speedup']:.2f}x** | "
        f"{r['cpu_speedup']:.2f}x | {r['speedup_total_incl_cache_build']:.2f}x | {r['flop_estimate']['speedup']:.2f}x | "
        f"{'yes' if r['losses_equal_to_rounding'] else 'NO'} ({r['max_step_loss_rel_diff']:.1e}) |",
    ])


def torchdistill_table(r: dict[str, Any]) -> str:
    f = r["frameworks"]
    cfg = r["config"]
    rows = [f"| {name} | {_pct(v['acc'])} | {v['epoch_s']['mean']:.3f} ± {v['epoch_s']['std']:.3f} |"
            for name, v in f.items()]
    return "\n".join([
        f"Hinton KD of the 784-800-800-10 student, T={cfg['temperature']:g}, {cfg['epochs']} epochs, live teacher, "
        f"{len(cfg['seeds'])} seeds, same initial weights, data order, loss, Adam and cosine schedule in both "
        f"(torchdistill {r['torchdistill_version']}).",
        "",
        "| framework | test accuracy (%) | s/epoch |",
        "|---|---|---|",
        *rows,
        "",
        f"kd_toolkit / torchdistill epoch time: **{r['epoch_time_ratio_kd_toolkit_vs_torchdistill']:.3f}x** "
        f"(median over seeds). Test images kd_toolkit got right minus torchdistill's, per seed (of "
        f"{r['test_images']}): {r['correct_minus_torchdistill_per_seed']}. Both optimise the same loss from the same "
        "start; they differ only by rounding (torchdistill's KL takes probabilities and its cosine schedule is "
        "recursive).",
    ])


SECTIONS: dict[str, tuple[str, Callable[[dict[str, Any]], str]]] = {
    "hinton_mnist": ("Protocol 1 — Hinton KD on MNIST (small)", hinton_table),
    "digits": ("Protocol 2 — digits, regression guard", digits_table),
    "overhead": ("Protocol 3 — framework overhead vs a plain PyTorch loop", overhead_table),
    "caching": ("Protocol 4 — teacher-output caching", caching_table),
    "torchdistill": ("Protocol 5 — torchdistill side by side", torchdistill_table),
}


def targets_table(results: dict[str, dict[str, Any]]) -> str:
    """The issue's targets against what this run measured."""
    rows: list[tuple[str, str, bool | None]] = []
    o = results.get("overhead", {}).get("result") or {}
    for c in o.get("cases", []) if "targets" not in o else []:  # results from before protocol 3 wrote its rows
        rows.append((f"kd_toolkit epoch <= 1.05x plain loop, same losses ({c['case']})",
                     f"{c['ratio_kd_toolkit_vs_plain']:.3f}x wall, {c['cpu_ratio_kd_toolkit_vs_plain']:.3f}x CPU; "
                     f"losses agree: {c['losses_agree_5dp']}",
                     c["ratio_kd_toolkit_vs_plain"] <= 1.05 and c["losses_agree_5dp"]))
    k = results.get("caching", {}).get("result")
    if k:
        rows.append(("cached teacher >= 1.5x, same losses", f"{k['speedup']:.2f}x; losses equal: "
                     f"{k['losses_equal_to_rounding']}", k["speedup"] >= 1.5 and k["losses_equal_to_rounding"]))
    t = results.get("torchdistill", {}).get("result")
    if t:
        f = t["frameworks"]
        diff = sum(t["correct_minus_torchdistill_per_seed"])
        rows.append(("as accurate as torchdistill", f"{_pct(f['kd_toolkit']['acc'])}% vs {_pct(f['torchdistill']['acc'])}%"
                     f" ({diff:+d} test images over {len(t['correct_minus_torchdistill_per_seed'])} seeds)", diff >= 0))
        ratio = t["epoch_time_ratio_kd_toolkit_vs_torchdistill"]
        rows.append(("no slower per epoch than torchdistill", f"{ratio:.3f}x", ratio <= 1.0))
    for entry in results.values():  # each protocol's own rows (the module contract's optional "targets")
        result = _load_result(entry)
        targets = result.get("targets") if isinstance(result, dict) else None
        for row in targets if isinstance(targets, list) else []:  # anything else under "targets" is not ours
            if isinstance(row, dict) and {"target", "measured"} <= set(row):
                rows.append((str(row["target"]), str(row["measured"]), row.get("met")))
    out = ["| target | measured | met |", "|---|---|---|"]
    out += [f"| {name} | {value} | {'n/a' if ok is None else ('yes' if ok else '**no**')} |" for name, value, ok in rows]
    return "\n".join(out)


def section_of(name: str, entry: dict[str, Any]) -> tuple[str, Callable[[dict[str, Any]], str] | None]:
    """The title and renderer of a protocol's section in the suite block (``None``: listed, not rendered).

    Protocols 1-5 use :data:`SECTIONS`; any other protocol its module's ``markdown(result)``, except the ones with a
    README section of their own (``entry["external"]``).
    """
    if name in SECTIONS:
        return SECTIONS[name]
    if entry.get("external") or not entry.get("module"):
        return name, None
    try:
        module = importlib.import_module(entry["module"])
    except ImportError:
        return name, None
    table = getattr(module, "markdown", None)
    title = getattr(module, "TITLE", None) or (module.__doc__ or name).strip().splitlines()[0].removeprefix("Protocol: ")
    return (title.rstrip("."), table) if callable(table) else (name, None)


def _schedule(plan: dict[str, Any] | None) -> str:
    if not plan or not plan.get("lanes"):
        return ""
    lanes = "; ".join(", ".join(f"`{n}`" for n in lane) for lane in plan["lanes"])
    alone = ", ".join(f"`{n}`" for n in plan["alone"]) or "none"
    return (f" The accuracy protocols ran in {len(plan['lanes'])} lanes, {plan['jobs']} in parallel, one process "
            f"and one thread each ({lanes}); the timing protocols ran afterwards one at a time with nothing else "
            f"running ({alone}).")


def render(summary: dict[str, Any]) -> str:
    """The Markdown for one suite run: header, machine, targets, one section per protocol, status of the rest."""
    m = summary["machine"]
    v = m["versions"]
    results = summary["protocols"]
    parts = [
        "## kd_toolkit benchmark protocols",
        "",
        f"Latest run: `{summary['command']}` ({summary['suite']} suite) on {m['date']}; {m['cpu']}, {m['cores']} cores, "
        f"{summary['threads']} torch thread(s); python {v['python']}, torch {v['torch']}, pytorch_lightning "
        f"{v['pytorch_lightning']}, torchdistill {v['torchdistill']}, kd_toolkit {v['kd_toolkit']}. Load average "
        f"at start {m['load_average']}, at end {summary['load_average_end']}; the suite took "
        f"{summary['seconds'] / 60:.1f} min.{_schedule(summary.get('schedule'))} Every figure below is measured by "
        f"the scripts in this folder (JSON in `benchmarks/results/`).",
        "",
        "### Targets", "", targets_table(results), "",
    ]
    others = []
    for name, entry in results.items():
        title, table = section_of(name, entry)
        if table is None:
            others.append((name, entry))
            continue
        parts += [f"### {title}", ""]
        if entry["status"] == "ok":
            try:
                parts += [table(entry["result"]), ""]
            except Exception as err:  # one result a renderer does not understand must not lose the whole report
                parts += [f"**could not render** this result ({type(err).__name__}: {err}); its JSON has the figures.", ""]
            if name not in SECTIONS and "seconds" in entry:
                parts += [f"Run time in this suite: {entry['seconds']:.0f} s.", ""]
        else:
            parts += [f"**{entry['status']}**: {entry.get('reason', '')}", ""]
    if others:
        parts += ["### Other protocols in this run", ""]
        parts += [f"- `{n}`: {e['status']} in {e['seconds']:.0f} s"
                  + (f": {e['reason']}" if e.get("reason") else "")
                  + (f"; this run's JSON: `{_relative(e['result_file'])}`" if e.get("result_file") else "")
                  + ("; its README section below is rewritten by `--suite full --readme` (or by its own script)"
                     if e.get("external") else "") for n, e in others]
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


INTRO = """# kd_toolkit benchmarks

Two questions a user choosing a distillation framework asks — does the distilled student really get
better, and what does the framework cost in speed — answered by scripts anyone can rerun. Every figure
in the tables is written by the scripts (`benchmarks/results/*.json` hold the raw numbers); nothing is
typed in. Accuracies are test accuracies **after the last epoch** (no early stopping, no model selection on
the test set), mean ± std over seeds. Times are wall-clock seconds per *steady-state* epoch (the median gap
between consecutive epoch ends, so start-up and cache building are excluded) with one torch thread; arms of a
timing comparison alternate (A B, B A, ...) after an untimed warm-up round, and medians are reported, with
process CPU time beside the wall time because the machine is shared; on it, repeated suite runs move the
ratios of the millisecond-step case noticeably (every repeat is in `ratio_all` in the JSON).

```
python -m benchmarks --suite quick   # smoke run of every protocol, < 3 min; writes results/quick/
python -m benchmarks --suite full    # the figures, < 30 min; writes results/latest/ (no tracked file changes)
python -m benchmarks --suite full --readme   # the same, published: results/*.json and this README's sections
make bench                           # = the quick suite (make bench-full: the full suite)
```

Options: `--only hinton_mnist,overhead` (a subset), `--threads N` (default 1), `--jobs N` (default 2),
`--out-dir DIR`, `--readme/--no-readme`. The protocols whose figures are accuracies run `--jobs` at a time in
worker processes, one torch thread each (at one thread the figures do not depend on the load); the protocols that
measure time run afterwards, one at a time, with nothing else running (`--jobs 1`: everything one by one). The MNIST protocols read the 10,000 MNIST test images from
`../shared/data/mnist-test` (or `$KD_BENCH_MNIST_DIR`), split stratified at random 8,000 train / 2,000 test
(seed 0), and are skipped with a message when the files are absent; protocol 5 is skipped with a message when
torchdistill cannot be imported (`pip install torchdistill`). The suites also run the issue-13 protocols
(`ensemble.py`, `logit_losses.py`, `early_exit_teacher.py`), `cache_scaling.py`, `export.py`, `fitnets.py` and
`early_exit.py` when present; with `--suite full --readme` the FitNets and early-exit sections below are rewritten
from the suite's run too (each script run on its own with its defaults also writes its JSON).

| protocol | script | question |
|---|---|---|
| 1 | `hinton_mnist.py` | Hinton et al. (2015), small: teacher 784-1200-1200-10 (dropout, ±2-px jitter), students 784-800-800-10 and 784-30-30-10 (no regularisation), plain vs KD with the temperature and loss weights chosen on a validation split (every T tried is shown), 3 seeds; share of the gap closed |
| 2 | `digits.py` | 8x8 digits, 10 seeds: teacher, plain student, KD student — a cheap regression guard |
| 3 | `overhead.py` | the same KD training through kd_toolkit, a bare LightningModule, and a plain PyTorch loop: seconds per epoch, ratio, losses equal to 5 decimals; Hinton's models and a tiny ~1 ms/step case |
| 4 | `caching.py` | protocol 1's KD run with the live teacher and with cached teacher logits: same losses, speed-up |
| 5 | `torchdistill_peer.py` | torchdistill's Hinton KD on protocol 1's models and data, next to kd_toolkit's |
| — | `ensemble.py` | issue 13: protocol 1's three teachers → one 784-800-800-10 student (mixture of their distributions), against KD from one teacher, plain training, the teachers and their ensemble; T chosen on validation, 3 seeds |
| — | `logit_losses.py` | issue 13: LS-KD, DKD and DIST against plain KD on protocol 1's MNIST setting and on digits; each loss's setting chosen on validation, 3 seeds |
| — | `early_exit_teacher.py` | issue 13: an early-exit LeNet with and without an external teacher for every exit: early-exit accuracy at calibrated thresholds, exit-0 share, 3 seeds |
| — | `cache_scaling.py` | the top-k teacher cache's KL error, bytes per sample, build time, and a temperature sweep over one persistent cache |
| — | `export.py` | the one-graph early-exit export: does the exported program's cost follow the share of samples that continue? |

How to read the speed figures:

- **Protocol 3** times three implementations of one KD training — same initial weights, data order (the same
  in-memory `make_loader`), seed, Adam and loss — and checks step by step that kd_toolkit's losses equal the
  plain loop's. *plain loop* is written out in `overhead.py`; *Lightning floor* is a minimal LightningModule
  without `self.log`, run by a bare `Trainer` (the cost of Lightning's own loop: hook dispatch, the optimizer
  closure and wrappers, the data fetcher, progress tracking); *kd_toolkit* is `KnowledgeDistillationTraining`
  with its default logging (CSV, every 50 steps) and without progress bar, checkpoints and grad-norm tracking,
  which the plain loop does not do either. kd_toolkit / floor is what kd_toolkit itself adds.
- What kd_toolkit changed for this: training losses are summed per epoch on the device and `self.log` runs only
  on the trainer's logging steps (`log_every_n_steps`) and an epoch's last batch, instead of once per loss
  component on every step (each call costs Lightning metadata checks, a signature inspection and a copy); the
  step values and the progress-bar value reach the host only on those steps (no per-step sync on a GPU); the
  non-finite-loss check runs every step on CPU (a free `.item()`) and on the logging steps on accelerators;
  cached teacher logits are gathered with `index_select`. The logged keys, their values and `metrics.csv` are
  unchanged.
- **Protocol 5**: torchdistill's training loop is a plain loop around its `DistillationBox`, so its epoch time
  is close to protocol 3's plain loop; kd_toolkit pays the Lightning floor on top.
- MNIST teachers are trained once per suite run (protocol 1) and reused by protocols 4 and 5 and by the
  ensemble, logit-loss, early-exit-teacher and cache-scaling protocols.

"""


def readme_block(summary: dict[str, Any]) -> str:
    """The kd_toolkit block of benchmarks/README.md: what the protocols are, then the latest tables."""
    return INTRO + render(summary)


def update_readme(path: Path, block: str) -> None:
    """Replace the text between the markers in ``path`` (create the file, or add the markers, if missing).

    Everything outside the markers is kept as it is. Without markers, the block goes after the title
    paragraph, before the first ``## `` section. Written atomically (temp file + rename).
    """
    wrapped = f"{START}\n{block.rstrip()}\n{END}"
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if START in text and END in text and text.index(START) < text.index(END):
        head, rest = text.split(START, 1)
        _, tail = rest.split(END, 1)
        new = head + wrapped + tail
    else:  # first run: the block goes before the first section, so section-by-section writers never span it
        match = re.search(r"^## ", text, flags=re.MULTILINE)
        cut = match.start() if match else len(text)
        head, tail = text[:cut].rstrip("\n"), text[cut:]
        new = (head + "\n\n" if head else "") + wrapped + "\n" + ("\n" + tail if tail else "")
    write_text(new, path)
