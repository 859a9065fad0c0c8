"""File writes and safe loads, in one place.

* :func:`atomic_write` writes through a temporary file **in the target directory**, flushes and
  ``fsync``\\ s it, then ``os.replace``\\ s it into place: a reader sees the old file or the new one,
  never half of one, and a failed write leaves the old file exactly as it was.
* :func:`save_torch`, :func:`write_json` and :func:`write_text` are that, for the formats we write.
* :func:`load_torch` never unpickles code (``weights_only=True`` whatever torch's default) and turns
  every failure into an error naming the file; :func:`load_weights` loads a state dict from any of the
  file shapes kd_toolkit writes.
* :func:`file_digest` is the SHA-256 of a file, for manifests.

Example:
    >>> path = write_json({"acc": 0.5}, getfixture("tmp_path") / "m.json")
    >>> json.loads(path.read_text())
    {'acc': 0.5}
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["DIGEST_KEY", "atomic_link", "atomic_write", "check_digest", "commit_staged", "file_digest", "load_torch",
           "load_weights", "save_torch", "stage_write", "state_digest", "write_json", "write_text"]

#: Permissions of the files we write (temporary files start as 0600): ordinary ``rw-r--r--`` less the umask.
_FILE_MODE = 0o666


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, make it durable, then move it into place.

    Raises whatever ``write`` raises (or ``OSError`` from the file system); ``path`` is then untouched and
    no temporary file is left behind.
    """
    return commit_staged(stage_write(path, write), path)


def stage_write(path: str | Path, write: Callable[[str], Any]) -> str:
    """The first half of :func:`atomic_write`: ``write(tmp_path)`` on a new temporary file beside ``path``; returns
    that file's name (not yet durable, not yet visible as ``path``; on failure it is removed and the error raised).
    Pass it to :func:`commit_staged`, or remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def commit_staged(tmp: str, path: str | Path) -> Path:
    """The second half of :func:`atomic_write`: ``fsync`` the staged file ``tmp``, then ``os.replace`` it onto
    ``path`` (a reader sees the old file or the new one, never half of one, even after a crash); on failure
    ``tmp`` is removed and ``path`` is untouched."""
    try:
        with open(tmp, "rb+") as handle:  # the data reaches the disk before the rename makes it visible
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(path)


def atomic_link(source: str | Path, path: str | Path) -> Path:
    """Make ``path`` another name of the file ``source`` (a hard link, no copy), atomically replacing ``path``;
    falls back to an atomic copy where the file system has no hard links."""
    import shutil

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
    except OSError:
        return atomic_write(path, lambda name: shutil.copyfile(source, name))
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars/arrays, torch tensors
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as indented JSON, atomically (numpy/torch values become plain values, paths strings)."""
    text = json.dumps(obj, indent=2, default=_to_builtin) + "\n"
    return write_text(text, path)


def write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | Path, *, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with clear errors for a missing or unreadable file.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: the file is truncated, corrupt, not a torch file, or holds pickled code.
    """
    import torch

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"Expected {what} {str(path)!r} to be an existing file, but it does not exist.")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{what[:1].upper()}{what[1:]} {str(path)!r} is corrupt or not a PyTorch {what} (truncated, damaged or "
            f"another format; {type(err).__name__}: {err})"[:600]
        ) from err


def load_weights(model: Any, path: str | Path, *, prefix: str = "student.") -> Any:
    """Load weights into ``model`` from a state-dict file, a ``{"state_dict": ...}`` file, a
    ``{"model_state_dict": ...}`` file or a kd_toolkit / Lightning checkpoint (keys under ``prefix`` are
    taken), safely (``weights_only=True``). Returns ``model``."""
    state = load_torch(path, what="weights file")
    check_digest(state, path)
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise ValueError(f"Expected {str(path)!r} to hold a state dict, but got {type(state).__name__}.")
    if prefix and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"The weights in {str(path)!r} do not fit {type(model).__name__} (different architecture or class "
            f"count): {str(err).splitlines()[0]} ..."
        ) from err
    return model


def file_digest(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, as ``"sha256:<hex>"``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


DIGEST_KEY = "kd_toolkit_digest"


def state_digest(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 over a state dict's keys, dtypes, shapes and tensor bytes (``"sha256:<hex>"``); stored in every
    checkpoint kd_toolkit writes and checked on load, so flipped bytes inside tensor data are detected."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key]
        digest.update(str(key).encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)  # the tensor's own bytes, not a copy
        else:
            digest.update(repr(value).encode())
    return "sha256:" + digest.hexdigest()


def check_digest(checkpoint: Any, path: str | Path) -> None:
    """Raise ``ValueError`` naming ``path`` when a checkpoint's stored digest does not match its state dict
    (files without a digest, e.g. written by plain Lightning, pass)."""
    if not isinstance(checkpoint, Mapping) or DIGEST_KEY not in checkpoint:
        return
    state = checkpoint.get("state_dict", {})
    if state_digest(state) != checkpoint[DIGEST_KEY]:
        raise ValueError(
            f"Checkpoint {str(path)!r} is corrupt: its weights do not match the digest stored when it was written "
            "(the file was damaged or modified after saving). Use another checkpoint, e.g. last.ckpt or an earlier one."
        )
