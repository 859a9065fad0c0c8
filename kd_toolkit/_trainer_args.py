"""Map seed-002 (Lightning 1.x era) Trainer arguments onto Lightning 2.x, with clear errors."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from kd_toolkit._checks import check_int, close_matches, expected
from kd_toolkit._io import check_digest, load_torch

_PRECISIONS = {
    16: "16-mixed", "16": "16-mixed", "16-mixed": "16-mixed", "16-true": "16-true",
    32: "32-true", "32": "32-true", "32-true": "32-true",
    64: "64-true", "64": "64-true", "64-true": "64-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true",
}
_STRATEGY_ALIASES = {"ddp", "ddp_spawn", "ddp_cpu", "ddp_find_unused_parameters_true", "dp", "ddp2",
                     "fsdp", "deepspeed", "ddp_notebook", "single_device"}
_ACCELERATORS = {"cpu", "gpu", "cuda", "mps", "tpu", "auto"}


def resolve_hardware(
    num_gpu_used: int | None,
    accelerator: str | None,
    devices: Any,
    strategy: Any,
    num_nodes: int,
) -> dict[str, Any]:
    """Return ``accelerator``, ``devices`` and ``strategy`` Trainer kwargs.

    Seed 002 used ``accelerator`` for what Lightning 2 calls the strategy ("ddp", "ddp_cpu", ...);
    both meanings are accepted. ``num_gpu_used``: 0 = CPU, 1 = one GPU, >1 = DDP over that many GPUs;
    ``None`` = one GPU if available, else CPU. Explicit ``devices``/``strategy`` win.
    """
    if num_gpu_used is not None and (isinstance(num_gpu_used, bool) or not isinstance(num_gpu_used, int) or num_gpu_used < 0):
        raise ValueError(f"Expected `num_gpu_used` to be an int >= 0 (0 = CPU), but got {num_gpu_used!r}.")
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 1:
        raise ValueError(f"Expected `num_nodes` to be a positive int, but got {num_nodes!r}.")
    if accelerator is not None and accelerator not in _ACCELERATORS | _STRATEGY_ALIASES:
        raise ValueError(
            f"Expected `accelerator` to be one of {sorted(_ACCELERATORS)} (or a seed-002 strategy name from "
            f"{sorted(_STRATEGY_ALIASES)}), but got {accelerator!r}."
        )
    if accelerator in _STRATEGY_ALIASES:  # seed 002 meaning: the distributed backend
        if strategy is None:
            strategy = "ddp" if accelerator in ("ddp_cpu", "ddp2") else accelerator
        accelerator = "cpu" if accelerator == "ddp_cpu" else None
    if accelerator is None:
        if num_gpu_used is None:
            accelerator = "auto"
        else:
            accelerator = "cpu" if num_gpu_used == 0 else "gpu"
    if devices is None:
        devices = num_gpu_used if num_gpu_used and accelerator != "cpu" else 1
    if strategy is None:
        many = (isinstance(devices, int) and devices > 1) or num_nodes > 1
        strategy = "ddp" if many else "auto"
    return {"accelerator": accelerator, "devices": devices, "strategy": strategy, "num_nodes": num_nodes}


def _uses_gpu(accelerator: str) -> bool:
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(precision: Any, accelerator: str) -> str:
    """Map seed precisions (16, 32, ...) to Lightning 2 names; fall back from 16-bit to 32 on CPU.

    ``None`` means the seed's default of 16-bit mixed precision on a GPU and 32-bit on CPU (silently).
    """
    on_gpu = _uses_gpu(accelerator)
    if precision is None:
        return "16-mixed" if on_gpu else "32-true"
    if precision not in _PRECISIONS:
        allowed = sorted({str(k) for k in _PRECISIONS})
        raise ValueError(f"Expected `precision` to be one of {allowed}, but got {precision!r}.")
    resolved = _PRECISIONS[precision]
    if resolved.startswith("16") and not on_gpu:
        warnings.warn(
            f"precision={precision!r} needs a CUDA GPU; training on CPU in 32-bit instead "
            "(bf16 is accepted on CPU but is slower than 32-bit there).",
            UserWarning,
            stacklevel=3,
        )
        return "32-true"
    return resolved


def check_loader(loader: Any, name: str) -> None:
    """A DataLoader with at least one batch."""
    if not isinstance(loader, DataLoader):
        raise ValueError(f"Expected `{name}` to be a torch.utils.data.DataLoader, but got {type(loader).__name__}.")
    try:
        size = len(loader)
    except TypeError:  # IterableDataset without __len__: can't tell up front
        return
    if size == 0:
        raise ValueError(f"Expected `{name}` to yield at least one batch, but it is empty (len == 0).")


def normalise_eval_loaders(loaders: Any, name: str) -> dict[str, DataLoader] | None:
    """``None``, a DataLoader (named after the stage) or a dict ``{name: DataLoader}`` (seed 002)."""
    if loaders is None:
        return None
    if isinstance(loaders, DataLoader):
        loaders = {name.split("_")[0]: loaders}
    if not isinstance(loaders, Mapping) or not loaders:
        raise ValueError(
            f"Expected `{name}` to be a non-empty dict {{name: DataLoader}} (or one DataLoader), but got "
            f"{type(loaders).__name__}."
        )
    for key, loader in loaders.items():
        if not isinstance(key, str):
            raise ValueError(f"Expected the keys of `{name}` to be strings, but got {key!r}.")
        check_loader(loader, f"{name}[{key!r}]")
    return dict(loaders)


def check_resume_path(path: Any) -> str | None:
    """Validate a checkpoint to resume from: it must exist and be a readable Lightning checkpoint."""
    return load_resume_checkpoint(path)[0]


def load_resume_checkpoint(path: Any) -> tuple[str | None, dict[str, Any]]:
    """``(path, checkpoint)`` of a checkpoint to resume from, validated (``(None, {})`` for no resume)."""
    if path in (None, ""):
        return None, {}
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Expected `resume_from_checkpoint` to be an existing checkpoint file, but {str(path)!r} does not exist.")
    checkpoint = load_torch(file, what="checkpoint")
    check_digest(checkpoint, file)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "loops" not in checkpoint:
        raise ValueError(
            f"Checkpoint {str(path)!r} is not a Lightning training checkpoint (no 'state_dict'/'loops'); "
            "resume needs a file written by KnowledgeDistillationTraining or a Lightning Trainer."
        )
    return str(file), checkpoint


def find_last_checkpoint(root: Path, name: str) -> str:
    """Newest ``last.ckpt`` under ``root/name/version_*/checkpoints`` (for ``resume_from_checkpoint="last"``)."""
    candidates = sorted((root / name).glob("version_*/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise FileNotFoundError(f"resume_from_checkpoint='last' found no last.ckpt under {str(root / name)!r}.")
    return str(candidates[-1])


_NUMPY_SEED_MAX = 2**32 - 1


def check_seed(seed: Any) -> int | None:
    """``None`` or an int that numpy accepts as a seed."""
    if seed is None:
        return None
    return check_int("seed", seed, minimum=0, maximum=_NUMPY_SEED_MAX)


def check_trainer_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse keywords that ``pytorch_lightning.Trainer`` does not take, naming the close matches."""
    import inspect

    import pytorch_lightning as pl

    allowed = [p for p in inspect.signature(pl.Trainer.__init__).parameters if p != "self"]
    for key in kwargs:
        if key not in allowed:
            hint = close_matches(key, allowed)
            raise ValueError(
                f"Unknown keyword {key!r}: it is neither a KnowledgeDistillationTraining argument nor a "
                f"pytorch_lightning.Trainer argument." + (f" Did you mean {' or '.join(map(repr, hint))}?" if hint else "")
            )


def check_root_dir(root: Any) -> Path:
    """``default_root_dir`` as a Path; it may not exist yet, but must not be a file."""
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise expected("default_root_dir", "a folder path (str or Path)", root)
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise expected("default_root_dir", "a folder (it is created if missing), not an existing file", str(root))
    return path


def check_devices_available(hardware: Mapping[str, Any]) -> None:
    """Asking for more GPUs than the machine has is an error that says how many it has."""
    if hardware["accelerator"] not in ("gpu", "cuda"):
        return
    devices = hardware["devices"]
    wanted = devices if isinstance(devices, int) else len(devices) if isinstance(devices, (list, tuple)) else None
    available = torch.cuda.device_count()
    if wanted is not None and wanted > available:
        raise ValueError(
            f"Expected at most {available} GPU(s) (this machine has {available}), but `num_gpu_used`/`devices` asks "
            f"for {devices!r}. Use num_gpu_used=0 (or accelerator='cpu') to train on the CPU."
        )


def resume_version(path: str | None, root: Path, name: str) -> str | None:
    """The ``version_N`` folder a resumed checkpoint belongs to (so the run continues in it), else ``None``."""
    if path is None:
        return None
    ckpt = Path(path).resolve()
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    if run_dir is not None and run_dir.parent == (root / name).resolve():
        return run_dir.name
    return None


def train_loader_state(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The training loader's state when ``checkpoint`` was written mid-epoch (see ``ResumableDataLoader``), else
    ``None`` (at an epoch's end ``RNGStateCallback`` saves ``done = 0``: the next epoch starts afresh)."""
    states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or []
    if len(states) != 1 or not isinstance(states[0], dict):
        return None
    return states[0] if int(states[0].get("done") or 0) > 0 else None


def check_resume_fits(path: str | None, checkpoint: Mapping[str, Any], module: Any) -> None:
    """The checkpoint to resume must hold this module's weights (same keys and shapes)."""
    if path is None:
        return
    state = checkpoint.get("state_dict", {})
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or reshaped:
        details = "; ".join(f"{label}: {keys[:4]}{' ...' if len(keys) > 4 else ''}" for label, keys in
                            (("missing", missing), ("unexpected", unexpected), ("different shape", reshaped)) if keys)
        raise ValueError(f"Checkpoint {str(path)!r} does not match this run's student (a checkpoint of another "
                         f"model?): {details}.")
