"""The persistent teacher cache: memory-mapped ``.npy`` files under ``cache_dir``, keyed by teacher and data.

Layout: ``cache_dir/teacher_cache_<mode>.<part>.npy`` (one file per tensor: ``logits`` for the exact cache;
``values``, ``indices``, ``tail`` for top-k) and ``teacher_cache_<mode>.json``, the key, written **last**: a cache
whose key file is present is complete. Every file is written atomically (:func:`kd_toolkit._io.atomic_write`).

The key holds the SHA-256 of every teacher's ``state_dict`` (:func:`kd_toolkit._io.state_digest`), a digest of the
dataset's identity, and for top-k ``k`` and the temperature (its tail bucket is tied to ``T``). **Dataset identity**
= its length plus the bytes of up to 16 samples at evenly spaced indices (first and last included), in index
order: it catches another dataset, another length, a reordering or a change of preprocessing, but not a change
confined to samples it does not read. A key that differs rebuilds the cache and says why, never reuses it.

One writer per node (``local_rank == 0``) builds and writes; the other ranks wait at a barrier, then every rank
memory-maps the same files (read-only pages shared through the OS page cache, copy-on-write for torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from kd_toolkit._io import atomic_write, state_digest, write_json

__all__ = ["cache_key", "check_cache_dir", "dataset_digest", "load_or_build"]

_SAMPLES = 16


def check_cache_dir(cache_dir: Any) -> Path | None:
    """``cache_dir`` as a writable directory (created if missing), or ``None``."""
    if cache_dir is None:
        return None
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise ValueError(f"Expected `cache_dir` to be a directory path, but got {cache_dir!r}.")
    path = Path(cache_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(f"Expected `cache_dir` to be a writable directory, but got {str(path)!r} ({err}).") from err
    return path


def _hash_into(digest: Any, obj: Any) -> None:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        digest.update(f"{obj.dtype}{obj.shape}".encode() + np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _hash_into(digest, item)
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=str):
            digest.update(str(key).encode())
            _hash_into(digest, obj[key])
    else:
        digest.update(repr(obj).encode())


def dataset_digest(dataset: Any) -> str:
    """SHA-256 of ``len(dataset)`` and up to 16 evenly spaced samples (see the module docstring for its limit)."""
    n = len(dataset)
    digest = hashlib.sha256(f"n={n}".encode())
    for i in sorted({round(j * (n - 1) / (_SAMPLES - 1)) for j in range(_SAMPLES)} if n else set()):
        digest.update(f"#{i}".encode())
        _hash_into(digest, dataset[i])
    return "sha256:" + digest.hexdigest()


def cache_key(teachers: Mapping[str, torch.nn.Module], dataset: Any, mode: str, k: int,
              temperature: float) -> dict[str, Any]:
    key: dict[str, Any] = {"format": 1, "mode": mode,
                           "teachers": {name: state_digest(t.state_dict()) for name, t in teachers.items()},
                           "dataset": dataset_digest(dataset), "num_samples": len(dataset)}
    if mode == "topk":
        key.update(k=k, temperature=float(temperature))
    return key


_WHY = {"teachers": "the teacher weights differ", "dataset": "the dataset differs (length, order or samples)",
        "num_samples": "the dataset's length differs", "k": "`cache_k` differs",
        "temperature": "the temperature differs (a top-k cache's tail is tied to T)"}


def _mismatch(stem: Path, key: dict[str, Any]) -> str | None:
    """Why the cache at ``stem`` cannot be reused (``"absent"`` when there is none), or ``None``."""
    try:
        stored = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return "absent"
    for field in key:
        if stored.get(field) != key[field]:
            return _WHY.get(field, f"{field} differs") + f" (stored {stored.get(field)!r}, now {key[field]!r})"
    return None


def _write(stem: Path, tensors: dict[str, Tensor], key: dict[str, Any], meta: dict[str, Any]) -> None:
    stem.with_suffix(".json").unlink(missing_ok=True)  # the key goes last: a half-written cache is never "complete"
    for part, tensor in tensors.items():
        array = tensor.detach().cpu().numpy()

        def save(tmp: str, array: np.ndarray = array) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, array)

        atomic_write(stem.parent / f"{stem.name}.{part}.npy", save)
    write_json({"key": key, "parts": sorted(tensors), **meta}, stem.with_suffix(".json"))


def load_or_build(cache_dir: Path, key: dict[str, Any], build: Callable[[], tuple[dict[str, Tensor], dict[str, Any]]],
                  *, writer: bool, barrier: Callable[[], None], log: Callable[[str], None]
                  ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The cache's tensors (memory-mapped, CPU) and metadata: reused when its key matches, else built by the writer.

    ``build()`` returns ``(tensors, meta)``; ``writer`` is this node's rank 0; ``barrier`` syncs the ranks.
    """
    stem = cache_dir / f"teacher_cache_{key['mode']}"
    if writer:
        reason = _mismatch(stem, key)
        if reason is None:
            log(f"Reusing the teacher cache {stem}.json (same teacher weights and dataset): the teacher is skipped.")
        else:
            if reason != "absent":
                warnings.warn(f"Rebuilding the teacher cache {stem}.json: {reason}.", UserWarning, stacklevel=2)
            tensors, meta = build()
            _write(stem, tensors, key, meta)
    barrier()
    reason = _mismatch(stem, key)
    if reason is not None:
        raise RuntimeError(f"Expected the teacher cache {stem}.json written by this node's rank 0, but {reason}; is "
                           "`cache_dir` local to each node and not shared with another run?")
    stored = json.loads(stem.with_suffix(".json").read_text(encoding="utf-8"))
    tensors = {part: torch.from_numpy(np.load(stem.parent / f"{stem.name}.{part}.npy", mmap_mode="c"))
               for part in stored["parts"]}
    return tensors, {k: v for k, v in stored.items() if k not in ("key", "parts")}
