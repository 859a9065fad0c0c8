"""The deployment manifest (``manifest.json``): its schema, its checks, and the segment files' digests.

This file imports only the standard library, so that it travels to a device with ``deploy.py`` and
``runtime.py``. :func:`validate_manifest` checks a parsed manifest completely *before* any segment
file is opened: every key present with the right type, ``num_segments`` equal to the list, shapes
and dtypes consistent from one segment to the next, every file name inside the export directory.
Each error names the key (``segments[1].input_shape``). :func:`verify_files` then checks every
file against its recorded size and SHA-256 digest, naming the file that is missing, truncated or
changed.

Example:
    >>> m = example_manifest()
    >>> validate_manifest(m, ".")["num_segments"]
    2
    >>> m["num_segments"] = 3
    >>> validate_manifest(m, ".")
    Traceback (most recent call last):
    ...
    ValueError: manifest.json: expected `num_segments` to be the length of `segments` (2), at least 2, but got 3.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["FORMATS", "MANIFEST", "SCHEMA", "SUFFIXES", "digest", "example_manifest", "read_manifest",
           "resolve_inside", "validate_manifest", "verify_files"]

SCHEMA = "kd_toolkit.segments/2"
MANIFEST = "manifest.json"
FORMATS = ("export", "onnx", "torchscript")
SUFFIXES = {"export": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}
DTYPES = ("float32", "float16", "bfloat16", "float64")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}

_NUMBER = (int, float)
#: key -> (allowed types, may be None)
_TOP: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema": ((str,), False), "format": ((str,), False), "opset": ((int,), True),
    "static_batch": ((list,), True), "kd_toolkit_version": ((str,), False), "torch_version": ((str,), False),
    "num_segments": ((int,), False), "num_classes": ((int,), False), "thresholds": ((list,), False),
    "confidence": ((str,), False), "input_dtype": ((str,), False), "boundary_dtype": ((str,), False),
    "payload": ((dict,), False), "segments": ((list,), False), "files": ((list,), False),
}
_SEGMENT: dict[str, tuple[tuple[type, ...], bool]] = {
    "index": ((int,), False), "file": ((str,), False), "programs": ((list,), False), "files": ((list,), False),
    "digests": ((dict,), False), "input_shape": ((list,), False), "input_dtype": ((str,), False),
    "feature_shape": ((list,), True), "boundary": ((dict,), True), "outputs": ((list,), False),
    "threshold": (_NUMBER, True), "is_last": ((bool,), False),
}
_BOUNDARY = {"shape": ((list,), False), "dtype": ((str,), False), "bytes_per_sample": ((int,), False)}
_PAYLOAD = {"input_bytes_per_sample": ((int,), False), "worst_case_bytes_per_sample": ((int,), False),
            "expected_bytes_per_sample": (_NUMBER, True), "exit_shares": ((list,), True)}


def _fail(key: str, allowed: str, got: Any) -> ValueError:
    return ValueError(f"{MANIFEST}: expected `{key}` to be {allowed}, but got {got!r}.")


def _check_keys(table: Mapping[str, Any], spec: Mapping[str, tuple[tuple[type, ...], bool]], prefix: str) -> None:
    for key, (types, nullable) in spec.items():
        name = f"{prefix}{key}"
        if key not in table:
            raise ValueError(f"{MANIFEST}: the key `{name}` is missing; re-export with this version of kd_toolkit.")
        value = table[key]
        if value is None and nullable:
            continue
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            kinds = " or ".join(t.__name__ for t in types) + (" or null" if nullable else "")
            raise _fail(name, f"of type {kinds}", value)


def _check_shape(value: Any, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                              for d in value):
        raise _fail(key, "a list of positive ints (a shape without the batch dimension)", value)
    return value


def resolve_inside(directory: str | os.PathLike, name: Any, key: str = "file") -> Path:
    """``directory / name``, or ``ValueError`` when ``name`` is not a plain relative path inside ``directory``."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or "\\" in name:
        raise _fail(key, "a file name relative to the export directory", name)
    root = Path(directory).resolve()
    path = (root / name).resolve()
    if path == root or root not in path.parents:
        raise _fail(key, f"a file inside the export directory {str(root)!r}", name)
    return path


def validate_manifest(manifest: Any, directory: str | os.PathLike) -> dict[str, Any]:
    """Check a parsed manifest against the schema; return it, or raise ``ValueError`` naming the key."""
    if not isinstance(manifest, dict):
        raise _fail("<manifest>", "a JSON object", type(manifest).__name__)
    if manifest.get("schema") != SCHEMA:
        raise _fail("schema", f"{SCHEMA!r} (re-export with this version of kd_toolkit)", manifest.get("schema"))
    _check_keys(manifest, _TOP, "")
    if manifest["format"] not in FORMATS:
        raise _fail("format", f"one of {FORMATS}", manifest["format"])
    if manifest["confidence"] not in ("max_prob", "entropy"):
        raise _fail("confidence", "one of ('max_prob', 'entropy')", manifest["confidence"])
    for key in ("input_dtype", "boundary_dtype"):
        if manifest[key] not in DTYPES:
            raise _fail(key, f"one of {DTYPES}", manifest[key])
    _check_keys(manifest["payload"], _PAYLOAD, "payload.")
    segments, count = manifest["segments"], manifest["num_segments"]
    if count < 2 or count != len(segments):
        raise _fail("num_segments", f"the length of `segments` ({len(segments)}), at least 2", count)
    if manifest["num_classes"] < 1:
        raise _fail("num_classes", "a positive int", manifest["num_classes"])
    thresholds = manifest["thresholds"]
    if len(thresholds) != count - 1 or not all(isinstance(t, _NUMBER) and not isinstance(t, bool)
                                               and 0 < t <= 1 for t in thresholds):
        raise _fail("thresholds", f"{count - 1} number(s) in (0, 1]", thresholds)
    static = manifest["static_batch"]
    if static is not None and (not static or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                                                     for b in static)):
        raise _fail("static_batch", "null or a non-empty list of positive ints", static)
    names: list[str] = []
    for index, entry in enumerate(segments):
        names += _check_segment(manifest, entry, index, directory)
    if sorted(manifest["files"]) != sorted(names):
        raise _fail("files", f"the files of the segments {sorted(names)}", manifest["files"])
    return manifest


def _check_segment(manifest: dict[str, Any], entry: Any, index: int, directory: str | os.PathLike) -> list[str]:
    prefix = f"segments[{index}]."
    if not isinstance(entry, dict):
        raise _fail(prefix[:-1], "a JSON object", entry)
    _check_keys(entry, _SEGMENT, prefix)
    last = index == manifest["num_segments"] - 1
    if entry["index"] != index:
        raise _fail(prefix + "index", str(index), entry["index"])
    if entry["is_last"] != last:
        raise _fail(prefix + "is_last", str(last).lower(), entry["is_last"])
    shape = _check_shape(entry["input_shape"], prefix + "input_shape")
    want_dtype = manifest["input_dtype"] if index == 0 else manifest["boundary_dtype"]
    if entry["input_dtype"] != want_dtype:
        raise _fail(prefix + "input_dtype", repr(want_dtype), entry["input_dtype"])
    if index > 0:
        previous = manifest["segments"][index - 1].get("feature_shape")
        if shape != previous:
            raise _fail(prefix + "input_shape", f"the feature_shape of segment {index - 1} ({previous})", shape)
    _check_outputs(manifest, entry, prefix, last)
    for key in ("files", "programs"):
        if not entry[key]:
            raise _fail(prefix + key, "a non-empty list", entry[key])
    for position, name in enumerate(entry["files"]):
        resolve_inside(directory, name, f"{prefix}files[{position}]")
        if not isinstance(entry["digests"].get(name), dict):
            raise _fail(f"{prefix}digests.{name}", "an object with `sha256` and `bytes`", entry["digests"].get(name))
    batches = [None] if manifest["static_batch"] is None else manifest["static_batch"]
    for position, program in enumerate(entry["programs"]):
        key = f"{prefix}programs[{position}]"
        if not isinstance(program, dict) or program.get("file") not in entry["files"]:
            raise _fail(key, f"an object whose `file` is one of {entry['files']}", program)
        if position >= len(batches) or program.get("batch") != batches[position]:
            raise _fail(key + ".batch", f"the batch sizes {batches} in order", program.get("batch"))
    if len(entry["programs"]) != len(batches):
        raise _fail(prefix + "programs", f"{len(batches)} program(s), one per batch size", entry["programs"])
    if entry["file"] != entry["programs"][0]["file"]:
        raise _fail(prefix + "file", repr(entry["programs"][0]["file"]), entry["file"])
    return list(entry["files"])


def _check_outputs(manifest: dict[str, Any], entry: dict[str, Any], prefix: str, last: bool) -> None:
    if last:
        if entry["feature_shape"] is not None or entry["boundary"] is not None or entry["threshold"] is not None:
            raise _fail(prefix + "feature_shape", "null for the last segment (with `boundary` and `threshold`)",
                        entry["feature_shape"])
        if entry["outputs"] != ["logits"]:
            raise _fail(prefix + "outputs", "['logits']", entry["outputs"])
        return
    shape = _check_shape(entry["feature_shape"], prefix + "feature_shape")
    if entry["outputs"] != ["features", "logits"]:
        raise _fail(prefix + "outputs", "['features', 'logits']", entry["outputs"])
    if entry["threshold"] != manifest["thresholds"][entry["index"]]:
        raise _fail(prefix + "threshold", f"thresholds[{entry['index']}]", entry["threshold"])
    boundary = entry["boundary"]
    if boundary is None:
        raise _fail(prefix + "boundary", "an object (shape, dtype, bytes_per_sample)", boundary)
    _check_keys(boundary, _BOUNDARY, prefix + "boundary.")
    if boundary["shape"] != shape or boundary["dtype"] != manifest["boundary_dtype"]:
        raise _fail(prefix + "boundary", f"shape {shape} and dtype {manifest['boundary_dtype']!r}", boundary)
    size = DTYPE_BYTES[boundary["dtype"]]
    for d in shape:
        size *= d
    if boundary["bytes_per_sample"] != size:
        raise _fail(prefix + "boundary.bytes_per_sample", f"{size} (shape x dtype size)", boundary["bytes_per_sample"])


def digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"sha256": "sha256:<hex>", "bytes": size}`` of a file."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return {"sha256": f"sha256:{sha.hexdigest()}", "bytes": os.path.getsize(path)}


def verify_files(manifest: dict[str, Any], directory: str | os.PathLike) -> None:
    """Check every segment file against its digest: ``FileNotFoundError`` or ``ValueError`` naming the file."""
    for index, entry in enumerate(manifest["segments"]):
        for name in entry["files"]:
            path = resolve_inside(directory, name)
            if not path.is_file():
                raise FileNotFoundError(f"The segment file {name!r} of segment {index}, listed in {MANIFEST}, is "
                                        f"missing from {str(Path(directory))!r}; copy the whole export directory.")
            want, got = entry["digests"][name], digest(path)
            if got["bytes"] != want.get("bytes"):
                raise ValueError(f"The segment file {name!r} has {got['bytes']} bytes, but {MANIFEST} records "
                                 f"{want.get('bytes')}: it is truncated or was changed; copy it again.")
            if got["sha256"] != want.get("sha256"):
                raise ValueError(f"The segment file {name!r} does not match its digest in {MANIFEST} "
                                 f"({want.get('sha256')}): it was changed or corrupted; copy it again.")


def read_manifest(directory: str | os.PathLike) -> Any:
    """The parsed ``manifest.json`` of ``directory``, or ``None`` when there is none or it is not JSON."""
    try:
        return json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def example_manifest() -> dict[str, Any]:
    """A small valid manifest (two segments, no real files): for examples and tests of the schema."""
    boundary = {"shape": [4], "dtype": "float32", "bytes_per_sample": 16}
    digest_entry = {"sha256": "sha256:0", "bytes": 0}
    first = {"index": 0, "file": "segment_0.pt2", "programs": [{"batch": None, "file": "segment_0.pt2"}],
             "files": ["segment_0.pt2"], "digests": {"segment_0.pt2": digest_entry}, "input_shape": [3],
             "input_dtype": "float32", "feature_shape": [4], "boundary": boundary,
             "outputs": ["features", "logits"], "threshold": 0.9, "is_last": False}
    last = {**first, "index": 1, "file": "segment_1.pt2", "programs": [{"batch": None, "file": "segment_1.pt2"}],
            "files": ["segment_1.pt2"], "digests": {"segment_1.pt2": digest_entry}, "input_shape": [4],
            "feature_shape": None, "boundary": None, "outputs": ["logits"], "threshold": None, "is_last": True}
    return {"schema": SCHEMA, "format": "export", "opset": None, "static_batch": None, "kd_toolkit_version": "0",
            "torch_version": "0", "num_segments": 2, "num_classes": 2, "thresholds": [0.9], "confidence": "max_prob",
            "input_dtype": "float32", "boundary_dtype": "float32",
            "payload": {"input_bytes_per_sample": 12, "worst_case_bytes_per_sample": 16,
                        "expected_bytes_per_sample": None, "exit_shares": None},
            "segments": [first, last], "files": ["segment_0.pt2", "segment_1.pt2"]}
