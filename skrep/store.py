"""A fitted explainer's training-side state on disk, memory-mapped back: ``fit(X, y, store=path)``.

A store is a folder:

- one ``.npy`` file per large array (features, alphas, projected gradients, ...), read back with
  ``numpy.load(mmap_mode="c")``, so explain streams training sets larger than memory and
  several processes share the pages;
- ``state.pkl``: the rest of the fitted state, pickled with every array and the model replaced
  by references, and read back by an unpickler that only builds skrep, sklearn, scipy.sparse
  and xgboost classes, torch and numpy dtypes and plain containers (no code runs);
- ``manifest.json``: format version, skrep version, explainer class and parameters, a
  fingerprint of the model's weights, and the size and checksum of every file.

Writing goes to a temporary folder next to ``path`` that is renamed into place when complete,
so an interrupted or failed write leaves no partial store (and the temporary folder is
removed). Reopening checks everything in the manifest: a store written for another model,
other parameters, another explainer class or an incompatible format version, or one with a
missing or truncated file, is refused with a message that says what differs.

Examples
--------
>>> import tempfile, os
>>> from sklearn.datasets import make_classification
>>> from sklearn.linear_model import LogisticRegression
>>> from skrep import RepresenterPoints
>>> X, y = make_classification(100, 4, random_state=0)
>>> model = LogisticRegression().fit(X, y)
>>> path = os.path.join(tempfile.mkdtemp(), "rps")
>>> a = RepresenterPoints(model).fit(X, y, store=path)
>>> b = RepresenterPoints(model).fit(store=path)  # e.g. in another process: no recomputation
>>> bool((a.explain(X[:3]).values == b.explain(X[:3]).values).all())
True
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import os
import pickle
import shutil
import uuid
import weakref
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import torch
from torch import nn

from ._version import __version__

__all__ = ["FORMAT_VERSION", "write_store", "read_store", "model_fingerprint", "release_pages"]

FORMAT = "skrep-store"
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_STATE = "state.pkl"
_INLINE_BYTES = 4096  # smaller arrays stay inside state.pkl
# parameters that change how explain runs, not what the fitted state is
_RUNTIME_PARAMS = {"model", "device", "batch_size", "block_bytes", "max_dense_bytes", "n_jobs", "verbose"}
_SAFE_BUILTINS = {"set", "frozenset", "slice", "range", "complex", "bytearray", "dict", "list", "tuple", "object"}
_SAFE_CLASS_MODULES = ("skrep.", "sklearn.", "scipy.sparse.", "xgboost.")


def model_fingerprint(model: Any) -> str:
    """A SHA-256 of the model's weights (and, for other models, of their pickled state)."""
    h = hashlib.sha256()
    if isinstance(model, nn.Module):
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()
    booster = model.get_booster() if hasattr(model, "get_booster") else model
    if hasattr(booster, "save_raw"):
        h.update(bytes(booster.save_raw(raw_format="ubj")))
        return h.hexdigest()
    return joblib.hash(model, hash_name="sha1")


def write_store(explainer: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Write ``explainer``'s fitted state to the folder ``path``, atomically.

    An existing store at ``path`` is replaced; any other existing file or folder is refused.
    Returns the state as written, its arrays memory-mapped from the new files (nothing to check:
    this process just wrote them).
    """
    path = Path(path)
    if path.exists() and not (path / _MANIFEST).is_file():
        raise ValueError(
            f"store={str(path)!r} exists and is not a skrep store (no {_MANIFEST}); pass a new folder name or "
            "remove it."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        arrays: dict[str, dict[str, Any]] = {}
        buf = io.BytesIO()
        _Pickler(buf, explainer.model, tmp, arrays).dump(_fitted_state(explainer))
        state = buf.getvalue()
        (tmp / _STATE).write_bytes(state)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "skrep_version": __version__,
            "explainer": type(explainer).__name__,
            "params": _param_reprs(explainer),
            "model_fingerprint": model_fingerprint(explainer.model),
            "state": {"file": _STATE, "bytes": len(state), "sha256": hashlib.sha256(state).hexdigest()},
            "arrays": arrays,
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return _load_state(state, explainer, path, arrays)
    finally:  # a failure or an interrupt, or the rename already done: no temporary folder stays
        shutil.rmtree(tmp, ignore_errors=True)


def read_store(explainer: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The fitted state stored at ``path``, checked against ``explainer`` (its class, params, model)."""
    path = Path(path)
    manifest = _manifest(path)
    refit = f"Refit with {type(explainer).__name__}(...).fit(X, y, store=...) to write a new one."
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"The store at {str(path)!r} has format version {manifest.get('format_version')!r} (written by skrep "
            f"{manifest.get('skrep_version')}); this skrep ({__version__}) reads version {FORMAT_VERSION}. {refit}"
        )
    if manifest.get("explainer") != type(explainer).__name__:
        raise ValueError(
            f"The store at {str(path)!r} holds a {manifest.get('explainer')}, not a {type(explainer).__name__}. {refit}"
        )
    params = _param_reprs(explainer)
    diff = {k for k in params.keys() | manifest["params"].keys() if params.get(k) != manifest["params"].get(k)}
    if diff:
        said = ", ".join(f"{k}: stored {manifest['params'].get(k)}, given {params.get(k)}" for k in sorted(diff))
        raise ValueError(f"The store at {str(path)!r} was written with other parameters ({said}). {refit}")
    if manifest.get("model_fingerprint") != model_fingerprint(explainer.model):
        raise ValueError(
            f"The store at {str(path)!r} was written for a different model (its weights' fingerprint differs). "
            f"Pass the model it was fitted with, or: {refit}"
        )
    for name, meta in [(_STATE, manifest["state"]), *manifest["arrays"].items()]:
        file = path / name
        size = file.stat().st_size if file.is_file() else None
        if size != meta["bytes"]:
            found = "missing" if size is None else f"{size} bytes instead of {meta['bytes']}"
            raise ValueError(f"The store at {str(path)!r} is damaged: {name} is {found} (truncated?). {refit}")
    state = (path / _STATE).read_bytes()
    if hashlib.sha256(state).hexdigest() != manifest["state"]["sha256"]:
        raise ValueError(f"The store at {str(path)!r} is damaged: {_STATE} does not match its checksum. {refit}")
    try:
        return _load_state(state, explainer, path, manifest["arrays"])
    except pickle.UnpicklingError as e:
        raise ValueError(f"The store at {str(path)!r} cannot be read: {e} {refit}") from None


def _load_state(state: bytes, explainer: Any, path: Path, arrays: dict[str, Any]) -> dict[str, Any]:
    return _Unpickler(io.BytesIO(state), explainer.model, path, arrays).load()


def _manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
    except FileNotFoundError:
        raise ValueError(
            f"store={str(path)!r} is not a skrep store (no {_MANIFEST}); write one with fit(X, y, store=...)."
        ) from None
    except (OSError, ValueError) as e:
        raise ValueError(f"The store at {str(path)!r} has an unreadable {_MANIFEST}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{str(path / _MANIFEST)!r} is not a skrep store manifest.")
    return manifest


def _fitted_state(explainer: Any) -> dict[str, Any]:
    params = set(explainer._get_param_names())
    # __getstate__: what pickling keeps (explainers drop caches there, e.g. closures over the data)
    return {k: v for k, v in explainer.__getstate__().items() if k not in params}


def _param_reprs(explainer: Any) -> dict[str, str]:
    return {k: repr(v) for k, v in explainer.get_params(deep=False).items() if k not in _RUNTIME_PARAMS}


def _model_objects(model: Any) -> dict[str, Any]:
    """The model and the objects inside it that fitted state may refer to, by a stable name."""
    objects = {"model": model}
    if isinstance(model, nn.Module):
        objects.update({f"module:{n}": m for n, m in model.named_modules()})
        objects.update({f"param:{n}": p for n, p in model.named_parameters()})
        objects.update({f"buffer:{n}": b for n, b in model.named_buffers()})
    for i, (_, step) in enumerate(getattr(model, "steps", [])):
        objects[f"step:{i}"] = step
    if hasattr(model, "get_booster"):
        objects["booster"] = model.get_booster()
    return objects


class _Pickler(pickle.Pickler):
    """Pickles fitted state with the model as a reference and large arrays as .npy files."""

    def __init__(self, file: io.BytesIO, model: Any, folder: Path, arrays: dict[str, dict[str, Any]]):
        super().__init__(file, protocol=5)
        self._names = {id(obj): name for name, obj in _model_objects(model).items()}
        self._folder, self._arrays = folder, arrays
        self._saved: dict[int, str] = {}
        self._keep: list[Any] = []  # keeps ids stable while pickling

    def persistent_id(self, obj: Any) -> Any:
        if id(obj) in self._names:
            return ("model", self._names[id(obj)])
        if isinstance(obj, torch.Tensor):
            t, order = _outer_first(obj.detach().cpu())
            dtype = str(t.dtype).removeprefix("torch.")
            raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t  # numpy has no bfloat16
            return self._array(obj, raw.numpy(), ("tensor", dtype, order))
        if isinstance(obj, np.ndarray) and obj.dtype.kind in "biufc":
            return self._array(obj, np.ascontiguousarray(obj), ("ndarray", obj.dtype.str, None))
        return None

    def _array(self, obj: Any, a: np.ndarray, kind: tuple) -> tuple:
        if a.nbytes < _INLINE_BYTES:
            return ("inline", *kind, a.dtype.str, a.shape, a.tobytes())
        if id(obj) not in self._saved:  # an array shared by several attributes is written once
            name = f"array{len(self._saved)}.npy"
            np.save(self._folder / name, a, allow_pickle=False)
            self._arrays[name] = {"bytes": (self._folder / name).stat().st_size, "shape": list(a.shape)}
            self._saved[id(obj)] = name
            self._keep.append(obj)
        return ("file", *kind, self._saved[id(obj)])


class _Unpickler(pickle.Unpickler):
    """Reads state.pkl back, resolving references; builds only an allow-listed set of classes."""

    def __init__(self, file: io.BytesIO, model: Any, folder: Path, arrays: dict[str, Any]):
        super().__init__(file)
        self._objects = _model_objects(model)
        self._folder, self._arrays = folder, arrays
        self._loaded: dict[str, Any] = {}

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] == "model":
            if pid[1] not in self._objects:
                raise ValueError(f"The store refers to {pid[1]!r}, which the given model does not have.")
            return self._objects[pid[1]]
        if pid[0] == "inline":
            _, kind, dtype, order, np_dtype, shape, raw = pid
            return _as(kind, dtype, order, np.frombuffer(raw, dtype=np.dtype(np_dtype)).reshape(shape).copy())
        _, kind, dtype, order, name = pid
        if name not in self._loaded:
            if name not in self._arrays:
                raise ValueError(f"The store's state refers to {name}, which its manifest does not list.")
            # copy-on-write mapping: writable for torch, the file never changes
            a = np.load(self._folder / name, mmap_mode="c", allow_pickle=False)
            self._loaded[name] = _as(kind, dtype, order, a)
            if isinstance(a, np.memmap) and a.nbytes:
                _MAPPINGS.append(_Mapping(a))
        return self._loaded[name]

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module == "builtins" and name in _SAFE_BUILTINS)
            or (module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, type)) and name != "load")
            or (module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray") and name in ("dtype", "scalar"))
            or module.startswith("numpy.dtypes")
            or module == "collections"
            and name == "OrderedDict"
            or module == "copyreg"
            and name == "_reconstructor"
        )
        if not allowed and (module + ".").startswith(_SAFE_CLASS_MODULES):
            allowed = isinstance(getattr(__import__(module, fromlist=[name]), name, None), type)
        if not allowed:
            raise pickle.UnpicklingError(f"The store's state names {module}.{name}, which a skrep store never holds.")
        return super().find_class(module, name)


class _Mapping:
    """The address range of one memory-mapped store file, held weakly."""

    def __init__(self, a: np.memmap):
        self.start = a.ctypes.data
        self.stop = self.start + a.nbytes
        self._memmap = weakref.ref(a)

    def release(self, start: int, stop: int) -> bool:
        """Drop the resident pages of [start, stop) if it lies in this mapping; whether it did."""
        a = self._memmap()
        mapped = None if a is None else getattr(a, "_mmap", None)
        if a is None or mapped is None or not (self.start <= start and stop <= self.stop):
            return False
        # numpy maps the file from the allocation-granularity boundary below the array's offset
        base = self.start - a.offset % mmap.ALLOCATIONGRANULARITY
        lo = (start - base) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = -(-(stop - base) // mmap.PAGESIZE) * mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, lo, min(hi, len(mapped)) - lo)
        return True


_MAPPINGS: list[_Mapping] = []


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t``'s memory lies in a memory-mapped store file (read from disk on access)."""
    start = t.data_ptr()
    return t.device.type == "cpu" and any(m.start <= start < m.stop and m._memmap() is not None for m in _MAPPINGS)


def release_pages(t: torch.Tensor) -> torch.Tensor:
    """Let the pages of ``t`` that come from a store file leave this process's resident memory.

    Called after each training chunk is scored, so that streaming over a store holds one chunk,
    not the whole file, in memory. The mapping is copy-on-write and never written, so the pages
    are read back from the file (usually the OS page cache) when touched again; any other
    tensor is left alone.
    """
    if hasattr(mmap, "MADV_DONTNEED") and t.device.type == "cpu" and t.numel():
        start = t.data_ptr()
        stop = start + t.numel() * t.element_size()  # rows of a row-major array: one range
        if t.is_contiguous():
            _MAPPINGS[:] = [m for m in _MAPPINGS if m._memmap() is not None]
            any(m.release(start, stop) for m in _MAPPINGS)
    return t


def _outer_first(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """``t``'s memory as one contiguous array, and the permutation that gives back its strides.

    A transposed or permuted tensor is stored in its own memory order: read back, it has the
    same strides, so the kernels run the same code path and give bit-identical scores.
    """
    strides = t.stride()
    order = tuple(sorted(range(t.ndim), key=lambda i: -strides[i]))
    p = t.permute(order)
    if order == tuple(range(t.ndim)) or not p.is_contiguous():
        return t.contiguous(), None
    return p, tuple(order.index(i) for i in range(t.ndim))


def _as(kind: str, dtype: str, order: tuple[int, ...] | None, a: np.ndarray) -> Any:
    if kind == "ndarray":
        return a
    t = torch.from_numpy(a)
    t = t.view(torch.bfloat16) if dtype == "bfloat16" else t
    return t if order is None else t.permute(order)
