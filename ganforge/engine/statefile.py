"""Checkpoint parts that never execute code when loaded.

Accelerate's ``save_state``/``load_state`` unpickle (``weights_only=False``), so a crafted checkpoint runs code on
resume. Here every part is a pair: ``name.safetensors`` (raw tensor bytes) and ``name.json`` (the skeleton: dicts,
lists, tuples, scalars, and references to the tensors). Loading only parses JSON and a safetensors header, so the
worst a hostile file can do is be rejected. Nothing here calls pickle, ``torch.load`` or ``eval``.

A checkpoint directory is sealed by ``manifest.json`` (size and sha256 of every file), written last, so a resume can
tell a complete checkpoint from one cut short by a crash, a full disk or later tampering.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ganforge.errors import GanforgeError

MANIFEST = "manifest.json"
FORMAT = "ganforge-checkpoint-1"
_TREE_FORMAT = "ganforge-tree-1"
_MANIFEST_TMP = ".manifest.json.tmp"
_CHUNK = 1 << 20
# Names from the safetensors spec. Complex and sparse tensors are left out: nothing in a GAN checkpoint needs them.
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
           torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}
_SPECIAL_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class CheckpointError(GanforgeError):
    """A checkpoint cannot be written or read (message is one line naming the file and what is wrong)."""


def _describe(e: BaseException) -> str:
    """``ENOSPC (No space left on device)`` for OS errors, else the message flattened to one line."""
    if isinstance(e, OSError) and e.errno in errno.errorcode:
        return f"{errno.errorcode[e.errno]} ({e.strerror or os.strerror(e.errno)})"
    return " ".join(str(e).split()) or type(e).__name__


describe = _describe  # public name for the checkpoint writer


def _join(prefix: str, key) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _write(path: Path, write) -> None:
    """Open ``path``, let ``write(f)`` fill it; an OSError (also from close, where NFS reports ENOSPC) is one line."""
    try:
        with open(path, "wb") as f:
            write(f)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {_describe(e)}") from e


class _Encoder:
    """Turns a tree into a JSON skeleton, collecting tensors under their flattened tree path."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _add(self, t: torch.Tensor, path: str) -> str:
        key, n = path or "tensor", 1
        while key in self.tensors:  # {"a.b": x, "a": {"b": y}} flatten to the same path
            n += 1
            key = f"{path}#{n}"
        self.tensors[key] = t
        return key

    def node(self, x, path: str):
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, (np.bool_, np.integer, np.floating)) and not isinstance(x, np.longdouble):
            return self.node(x.item(), path)  # numpy scalars become python ones (np.float64 even is a float)
        if isinstance(x, int):
            return x
        if isinstance(x, float):  # JSON has no nan/inf; repr gives exactly 'nan', 'inf', '-inf'
            return x if math.isfinite(x) else {"t": "float", "v": repr(x)}
        if isinstance(x, torch.Tensor):
            if x.layout != torch.strided or x.is_meta or x.dtype not in _DTYPES:
                raise TypeError(f"cannot save {x.dtype} {x.layout} tensor on {x.device} at {path or '<root>'}")
            return {"t": "tensor", "key": self._add(x.detach().cpu().contiguous(), path)}
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "biufc":
                raise TypeError(f"cannot save numpy array of dtype {x.dtype} at {path or '<root>'}")
            # Stored as raw bytes: every numeric numpy dtype (and byte order) round-trips, even ones torch lacks.
            raw = torch.from_numpy(np.frombuffer(x.tobytes(), dtype=np.uint8).copy())
            return {"t": "ndarray", "key": self._add(raw, path), "dtype": x.dtype.str, "shape": list(x.shape)}
        if isinstance(x, dict):
            items = []
            for k, v in x.items():
                k = int(k) if isinstance(k, np.integer) else k
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise TypeError(f"cannot save dict key {k!r} at {path or '<root>'}: only str and int keys")
                items.append([k, self.node(v, _join(path, k))])  # JSON arrays keep int keys int
            return {"t": "dict", "items": items}
        if isinstance(x, list):
            return [self.node(v, _join(path, i)) for i, v in enumerate(x)]
        if isinstance(x, tuple):  # RNG states and Adam betas must come back as tuples, not lists
            return {"t": "tuple", "items": [self.node(v, _join(path, i)) for i, v in enumerate(x)]}
        raise TypeError(f"cannot save {type(x).__qualname__} at {path or '<root>'}")


def _write_safetensors(f, tensors: dict[str, torch.Tensor]) -> None:
    """Stream tensors in safetensors layout ourselves: no second in-memory copy, and real OSErrors with errno
    (``safetensors.torch.save_file`` raises its own error type with the errno only in the text)."""
    if sys.byteorder != "little":
        raise CheckpointError("safetensors stores little-endian bytes; big-endian hosts are not supported")
    # Largest items first keeps every tensor aligned to its item size, as the reference writer does.
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for k in order:
        t = tensors[k]
        size = t.numel() * t.element_size()
        header[k] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so the data section starts 8-byte aligned
    f.write(struct.pack("<Q", len(raw)) + raw)
    for k in order:
        f.write(tensors[k].reshape(-1).view(torch.uint8).numpy().data)


def save_tree(directory: Path, name: str, tree) -> list[Path]:
    """Write ``tree`` as ``directory/name.safetensors`` + ``directory/name.json``; returns both paths.

    The whole tree is encoded before anything touches disk, so an unsupported type (``TypeError`` naming its tree
    path) leaves no half-written part behind.
    """
    directory = Path(directory)
    enc = _Encoder()
    skeleton = json.dumps({"format": _TREE_FORMAT, "tree": enc.node(tree, "")}, separators=(",", ":"),
                          allow_nan=False).encode()
    spath, jpath = directory / f"{name}.safetensors", directory / f"{name}.json"
    _write(spath, lambda f: _write_safetensors(f, enc.tensors))
    _write(jpath, lambda f: f.write(skeleton))
    return [spath, jpath]


class _Decoder:
    def __init__(self, tensors: dict[str, torch.Tensor], jpath: Path) -> None:
        self.tensors, self.jpath, self.used = tensors, jpath, set()

    def _bad(self, path: str, what: str) -> CheckpointError:
        return CheckpointError(f"{self.jpath}: {what} at {path or '<root>'}")

    def _tensor(self, node: dict, path: str) -> torch.Tensor:
        key = node.get("key")
        if not isinstance(key, str) or key not in self.tensors:
            raise self._bad(path, f"reference to tensor {key!r} missing from {self.jpath.stem}.safetensors")
        self.used.add(key)
        return self.tensors[key]

    def node(self, x, path: str):
        if x is None or isinstance(x, (bool, str, int, float)):
            return x
        if isinstance(x, list):
            return [self.node(v, _join(path, i)) for i, v in enumerate(x)]
        tag = x.get("t")
        if tag == "float" and x.get("v") in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[x["v"]]
        if tag == "tensor":
            return self._tensor(x, path)
        if tag == "ndarray":
            raw, shape, dtype = self._tensor(x, path), x.get("shape"), x.get("dtype")
            try:  # np.dtype(None) would silently mean float64, so insist on a string
                dtype = np.dtype(dtype) if isinstance(dtype, str) else np.dtype(object)
            except TypeError:
                dtype = np.dtype(object)
            if (dtype.kind not in "biufc" or raw.dtype != torch.uint8 or not isinstance(shape, list)
                    or not all(type(n) is int and n >= 0 for n in shape)
                    or raw.numel() != math.prod(shape) * dtype.itemsize):
                raise self._bad(path, "malformed numpy array")
            return np.frombuffer(raw.numpy().tobytes(), dtype=dtype).reshape(shape).copy()
        if tag in ("dict", "tuple") and isinstance(x.get("items"), list):
            if tag == "tuple":
                return tuple(self.node(v, _join(path, i)) for i, v in enumerate(x["items"]))
            out = {}
            for item in x["items"]:
                if not (isinstance(item, list) and len(item) == 2 and type(item[0]) in (str, int)):
                    raise self._bad(path, "malformed dict item")
                out[item[0]] = self.node(item[1], _join(path, item[0]))
            return out
        raise self._bad(path, f"unknown node {json.dumps(x)[:60]}")


def _read_json(path: Path):
    """Parse strict JSON (no NaN literals); any failure is a one-line CheckpointError naming ``path``."""
    def no_constants(c):
        raise ValueError(f"non-standard constant {c}")
    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=no_constants)
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {_describe(e)}") from e
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not valid JSON ({_describe(e)})") from e


def load_tree(directory: Path, name: str):
    """Read back what ``save_tree`` wrote; every malformation is a one-line CheckpointError naming the file."""
    directory = Path(directory)
    spath, jpath = directory / f"{name}.safetensors", directory / f"{name}.json"
    doc = _read_json(jpath)
    if not isinstance(doc, dict) or doc.get("format") != _TREE_FORMAT or "tree" not in doc:
        raise CheckpointError(f"{jpath}: not a ganforge tree (expected format {_TREE_FORMAT!r})")
    try:  # the safetensors loader only parses a JSON header and copies bytes: no code runs
        tensors = load_file(spath)
    except Exception as e:  # SafetensorError (not an OSError subclass), OSError, or whatever a newer version raises
        raise CheckpointError(f"cannot read {spath}: {_describe(e)}") from e
    dec = _Decoder(tensors, jpath)
    try:
        tree = dec.node(doc["tree"], "")
    except RecursionError:
        raise CheckpointError(f"{jpath}: nested too deeply") from None
    if unused := sorted(tensors.keys() - dec.used):  # the two files are from different saves
        raise CheckpointError(f"{spath}: tensor {unused[0]!r} is not referenced by {jpath.name}")
    return tree


def _listing(directory: Path) -> dict[str, Path]:
    """Every non-directory entry below ``directory`` by relative posix path, manifest (and its temp) excluded."""
    def fail(e: OSError):
        raise e
    found = {}
    for root, dirs, files in os.walk(directory, onerror=fail):
        for n in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            p = Path(root, n)
            rel = p.relative_to(directory).as_posix()
            if rel not in (MANIFEST, _MANIFEST_TMP):
                found[rel] = p
    return found


def _digest(path: Path, sync: bool = False) -> tuple[int, str]:
    """(size, sha256) streamed in 1 MiB chunks; ``sync`` also flushes the file so the manifest never outlives it."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
        if sync:
            os.fsync(f.fileno())
    return size, h.hexdigest()


def write_manifest(directory: Path, meta: dict) -> Path:
    """Seal ``directory``: size and sha256 of every file plus ``meta``, written atomically and last."""
    directory = Path(directory)
    files, path = {}, directory
    try:
        for rel, path in sorted(_listing(directory).items()):
            if not path.is_file() or path.is_symlink():  # a symlink or fifo has no place in a checkpoint
                raise CheckpointError(f"cannot seal {path}: not a regular file")
            size, sha = _digest(path, sync=True)
            files[rel] = {"size": size, "sha256": sha}
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {_describe(e)}") from e
    text = json.dumps({"format": FORMAT, "meta": meta, "files": files}, indent=1, allow_nan=False).encode()
    tmp, final = directory / _MANIFEST_TMP, directory / MANIFEST

    def put(f) -> None:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _write(tmp, put)
    try:
        os.replace(tmp, final)
        fd = os.open(directory, os.O_RDONLY)  # make the rename itself durable
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise CheckpointError(f"cannot write {final}: {_describe(e)}") from e
    return final


def _manifest(directory: Path) -> dict:
    """The parsed, shape-checked manifest; CheckpointError whose message is a reason relative to ``directory``."""
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{MANIFEST} missing")
    try:
        doc = _read_json(path)
    except CheckpointError as e:  # re-worded relative to the directory; verify() reasons name files that way
        what = f"cannot read: {_describe(e.__cause__)}" if isinstance(e.__cause__, OSError) else "not valid JSON"
        raise CheckpointError(f"{MANIFEST}: {what}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise CheckpointError(f"{MANIFEST}: format {fmt!r} is not {FORMAT!r}")
    files = doc.get("files")
    if not isinstance(files, dict) or not isinstance(doc.get("meta"), dict):
        raise CheckpointError(f"{MANIFEST}: malformed (needs 'files' and 'meta' objects)")
    for rel, entry in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise CheckpointError(f"{MANIFEST}: path {rel!r} escapes the checkpoint")
        size, sha = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (None, None)
        if type(size) is not int or size < 0 or not isinstance(sha, str) or len(sha) != 64:
            raise CheckpointError(f"{MANIFEST}: bad entry for {rel!r}")
    return doc


def read_manifest(directory: Path) -> dict:
    """``{"format", "meta", "files"}`` of a checkpoint; CheckpointError if it is missing or malformed."""
    directory = Path(directory)
    try:
        return _manifest(directory)
    except CheckpointError as e:
        raise CheckpointError(f"{directory}: {e}") from None


def verify(directory: Path) -> str | None:
    """None if ``directory`` holds exactly the files its manifest lists, byte for byte; else the first reason."""
    directory = Path(directory)
    try:
        files = _manifest(directory)["files"]
        actual = _listing(directory)
    except CheckpointError as e:
        return str(e)
    except OSError as e:
        return f"cannot list {directory}: {_describe(e)}"
    rel = MANIFEST
    try:
        for rel in sorted(files):
            p = actual.get(rel)
            if p is None or p.is_symlink() or not p.is_file():  # a symlink could point anywhere
                return f"{rel} missing" if p is None else f"{rel}: not a regular file"
            if (size := p.stat().st_size) != files[rel]["size"]:  # cheap checks first: no hashing GBs to find this
                return f"{rel}: size {size} != {files[rel]['size']} in manifest"
        if extra := sorted(actual.keys() - files.keys()):
            return f"{extra[0]}: not listed in manifest (added after the checkpoint was written)"
        for rel in sorted(files):
            size, sha = _digest(actual[rel])
            if size != files[rel]["size"] or sha != files[rel]["sha256"]:
                return f"{rel}: sha256 {sha[:12]}... differs from manifest"
    except OSError as e:  # e.g. a file vanished or became unreadable while we looked
        return f"{rel}: cannot read: {_describe(e)}"
    return None


def newest_verified(dirs: list[Path]) -> tuple[Path | None, list[tuple[Path, str]]]:
    """Newest of ``dirs`` (oldest first) that verifies, and the newer ones skipped with their reasons."""
    skipped = []
    for d in reversed(dirs):
        reason = verify(d)
        if reason is None:
            return d, skipped
        skipped.append((d, reason))
    return None, skipped


def capture_rng() -> dict:
    """Every RNG a training step draws from, in a form ``save_tree`` accepts."""
    cuda = []
    if torch.cuda.is_available():  # guarded: must not initialise CUDA where there is none
        cuda = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(tree: dict) -> None:
    """Inverse of ``capture_rng``. Everything is checked before anything is set, so a malformed tree raises a
    one-line CheckpointError and leaves the RNGs as they were. Saved CUDA states beyond this host's devices are
    ignored (e.g. inspecting a GPU checkpoint on a CPU machine)."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"malformed RNG state: {what}")

    def is_bytes(t, numel: int | None = None) -> bool:
        return isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1 and numel in (None, t.numel())

    if not isinstance(tree, dict) or not {"python", "numpy", "torch", "cuda"} <= tree.keys():
        raise bad("expected a dict with python, numpy, torch and cuda")
    py, npst, cuda = tree["python"], tree["numpy"], tree["cuda"]
    if not (isinstance(py, tuple) and len(py) == 3 and type(py[0]) is int and isinstance(py[1], tuple)
            and len(py[1]) == 625 and all(type(v) is int for v in py[1]) and (py[2] is None or type(py[2]) is float)):
        raise bad("python: expected (version, 625 ints, gauss)")
    if not (isinstance(npst, tuple) and len(npst) == 5 and npst[0] == "MT19937" and isinstance(npst[1], np.ndarray)
            and npst[1].dtype == np.uint32 and npst[1].shape == (624,) and type(npst[2]) is int
            and type(npst[3]) is int and isinstance(npst[4], float)):
        raise bad("numpy: expected ('MT19937', uint32[624], pos, has_gauss, gauss)")
    if not is_bytes(tree["torch"], torch.get_rng_state().numel()):
        raise bad("torch: expected a uint8 tensor the size of torch.get_rng_state()")
    if not (isinstance(cuda, list) and all(is_bytes(t) for t in cuda)):
        raise bad("cuda: expected a list of uint8 tensors")
    try:
        random.setstate(py)
        np.random.set_state(npst)
        torch.set_rng_state(tree["torch"])
        if torch.cuda.is_available():
            for i, t in enumerate(cuda[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(t, i)
    except (TypeError, ValueError, RuntimeError) as e:
        raise bad(_describe(e)) from e


def first_non_finite(tree, prefix: str = "") -> str | None:
    """Tree path of the first float tensor/array/scalar holding nan or inf (so a diverged run is never published)."""
    if isinstance(tree, (dict, list, tuple)):
        items = tree.items() if isinstance(tree, dict) else enumerate(tree)
        return next((p for k, v in items if (p := first_non_finite(v, _join(prefix, k))) is not None), None)
    if isinstance(tree, torch.Tensor):
        bad = (tree.is_floating_point() or tree.is_complex()) and not bool(torch.isfinite(tree).all())
    elif isinstance(tree, np.ndarray):
        bad = tree.dtype.kind in "fc" and not bool(np.isfinite(tree).all())
    else:
        bad = isinstance(tree, (float, np.floating)) and not math.isfinite(tree)
    return (prefix or "<root>") if bad else None
