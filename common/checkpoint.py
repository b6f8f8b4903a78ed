"""Checkpoints: atomic saving, full resume state, and safe loading of the original repositories' files.

* :func:`save_checkpoint` writes to a temporary file beside the target and renames it over the target, so a
  crash never leaves a half-written checkpoint and an existing one is replaced only by a complete file.
* :func:`training_state` / :func:`resume` carry everything a run needs to continue bit-for-bit: model,
  optimizer, scheduler, AMP scaler, EMA, epoch, step and the Python / NumPy / torch RNG states.
* :func:`load_checkpoint_file` never unpickles arbitrary objects: ``torch.load(weights_only=True)`` with an
  explicit allow-list (``argparse.Namespace`` as saved by timm and torchvision scripts, NumPy scalars).
* :func:`select_state_dict` picks the ``state_dict_ema`` / ``model_ema`` / ``model`` / ``state_dict`` /
  ``net`` entry and strips the ``module.`` prefix of DataParallel/DDP; :func:`load_state_dict` loads it and
  reports missing, unexpected and shape-mismatched keys in words.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import pickle
import random
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.distributed import is_main_process
from common.errors import UserError

# Data-only globals that checkpoints of timm / torchvision / the original repositories contain. NumPy 1.x
# pickled its scalars and arrays under ``numpy.core``; NumPy 2 names the same functions ``numpy._core``.
_np_multiarray = np._core.multiarray
ALLOWED_GLOBALS: list[Any] = [argparse.Namespace, np.dtype, np.ndarray, _np_multiarray.scalar,
                              _np_multiarray._reconstruct,
                              (_np_multiarray.scalar, "numpy.core.multiarray.scalar"),
                              (_np_multiarray._reconstruct, "numpy.core.multiarray._reconstruct")]
ALLOWED_GLOBALS += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "bool", "uint8")]

STATE_DICT_ENTRIES = ("state_dict", "model", "net", "module")
EMA_ENTRIES = ("state_dict_ema", "model_ema")


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, unsafe to load, made for another model, or cannot be written."""


class OutputDirError(UserError):
    """An output folder that cannot be used: a file, not writable, full, or held by another live run."""


# --------------------------------------------------------------------------------------------------- saving
TEMP_MARK, TEMP_SUFFIX = ".partial-", ".tmp"  # save_checkpoint writes .<name>.partial-<random>.tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path | None:
    """Write ``state`` to ``path`` atomically (temp file + rename); only the main process writes.

    The file gets the permissions of any file the user creates (``0o666`` less the umask). When the disk fills
    or the folder cannot be written, the temporary file is removed, the previous checkpoint at ``path`` is kept
    as it was, and the error is a :class:`CheckpointError` saying so. Returns the path written, or None on other
    ranks.
    """
    if not is_main_process():
        return None
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as err:
        raise CheckpointError(f"cannot write {path} ({err.strerror}); choose a writable output folder") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        kept = " (the previous checkpoint there is kept)" if path.is_file() else ""
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left on device while writing {path}{kept}; free space on "
                                  f"{path.parent} or choose another output folder") from None
        if isinstance(err, OSError):
            raise CheckpointError(f"cannot write {path} ({err.strerror}){kept}") from None
        raise
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`save_checkpoint` of a killed run left in ``folder``; call it only
    while holding the folder's :class:`OutputLock` (no live run writes there then). Returns what was removed."""
    stale = [p for p in Path(folder).glob(f".*{TEMP_MARK}*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


# ------------------------------------------------------------------------------------------- output folder
LOCK_NAME = ".run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def check_output_dir(path: str | Path, flag: str = "--output-dir", min_free_bytes: int = 16 << 20) -> Path:
    """Fail before any work when ``path`` cannot hold a run's outputs: it is a file, a parent is a file or not
    writable, or its file system has less than ``min_free_bytes`` free. Creates nothing; returns ``path``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{flag} {path} is an existing file, not a folder; choose a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise OutputDirError(f"{flag} {path}: {existing} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(f"{flag} {path}: {existing} is not writable; choose a folder you can write to")
    free = shutil.disk_usage(existing).free
    if free < min_free_bytes:
        raise OutputDirError(f"{flag} {path}: no space left on {existing} ({free >> 20} MiB free); free space or "
                             "choose another folder")
    return path


class OutputLock:
    """One run per output folder: a lock file holding the owner's PID, taken with ``O_EXCL``.

    A second run into a folder that a live process holds is refused, naming that process; the lock of a dead
    process (a killed run) is taken over, and that run's stale temporary files are removed. The folder is created
    if needed and, when the run wrote nothing into it, removed again on :meth:`release` (or leaving the ``with``
    block), so a run that fails early leaves nothing behind.
    """

    def __init__(self, folder: str | Path, flag: str = "--output-dir"):
        self.path = Path(folder) / LOCK_NAME
        self.flag = flag
        self.held = False
        self.created: list[Path] = []

    def acquire(self) -> OutputLock:
        folder = self.path.parent
        self.created = [p for p in (folder, *folder.parents) if not p.exists()]  # innermost first
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputDirError(f"{self.flag} {folder}: cannot create it ({err.strerror})") from None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and _pid_alive(owner):
                    raise OutputDirError(
                        f"{self.flag} {self.path.parent} is in use by another run (process {owner}); wait for it "
                        f"to finish or choose another folder (remove {self.path} if that process is not a run)"
                    ) from None
                self.path.unlink(missing_ok=True)  # a dead run's lock: take it over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            remove_stale_temporaries(self.path.parent)
            return self
        raise OutputDirError(f"{self.flag} {self.path.parent}: another run took the lock at the same time; retry")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def release(self) -> None:
        if self.held and self._owner() == os.getpid():
            self.path.unlink(missing_ok=True)
            for folder in self.created:  # the folders this run created, if it wrote nothing into them
                if any(folder.iterdir()):
                    break
                folder.rmdir()
        self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def prepare_output_dir(path: str | Path | None, flag: str = "--output-dir") -> OutputLock | contextlib.nullcontext:
    """:func:`check_output_dir` then an :class:`OutputLock` on it, as a context manager for the whole run; only
    the main process locks (a ``nullcontext`` elsewhere and when ``path`` is None or empty)."""
    if not path or not is_main_process():
        return contextlib.nullcontext()
    return OutputLock(check_output_dir(path, flag), flag)


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def training_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: nn.Module | None = None,
    epoch: int | None = None,
    step: int | None = None,
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Everything needed to resume a run, as the plain dict torchvision's reference scripts save.

    ``args`` is stored as a dict of plain values so the file loads with ``weights_only=True``.
    """
    state: dict[str, Any] = {"model": unwrap_model(model).state_dict(), "rng": _rng_state()}
    for name, obj in (("optimizer", optimizer), ("lr_scheduler", scheduler), ("scaler", scaler),
                      ("model_ema", ema)):
        if obj is not None:
            state[name] = obj.state_dict()
    if epoch is not None:
        state["epoch"] = epoch
    if step is not None:
        state["step"] = step
    if args is not None:
        state["args"] = dict(vars(args)) if isinstance(args, argparse.Namespace) else dict(args)
    state.update(extra)
    return state


def resume(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: nn.Module | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a :func:`training_state` checkpoint into the given objects; returns the whole checkpoint.

    The caller continues from ``checkpoint["epoch"] + 1``. Objects passed here but absent from the file are a
    :class:`CheckpointError` (resuming with a fresh optimizer would silently change the run).
    """
    ckpt = load_checkpoint_file(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a training checkpoint of this repository (no 'model' entry); "
                              "use --weights / --initial-checkpoint for released or pretrained weights")
    load_state_dict(unwrap_model(model), ckpt["model"], strict=True, source=str(path))
    for name, obj in (("optimizer", optimizer), ("lr_scheduler", scheduler), ("scaler", scaler),
                      ("model_ema", ema)):
        if obj is None:
            continue
        if name not in ckpt:
            raise CheckpointError(f"{path} has no '{name}' state to resume from; it was saved by a run "
                                  f"without it (start a new run, or drop the option that needs it)")
        if name == "model_ema":
            load_state_dict(obj, ckpt[name], strict=True, source=f"{path} (model_ema)")
        else:
            obj.load_state_dict(ckpt[name])
    if restore_rng and "rng" in ckpt:
        _set_rng_state(ckpt["rng"])
    return ckpt


# -------------------------------------------------------------------------------------------------- loading
def _torch_reason(err: Exception) -> str:
    """The specific sentence of a ``torch.load`` error: its boilerplate about ``weights_only`` dropped, whole
    sentences kept."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue",
                                                             "Check the documentation"))]
    text = " ".join(useful or lines).removeprefix("WeightsUnpickler error:").strip()
    return text or type(err).__name__


def load_checkpoint_file(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and :data:`ALLOWED_GLOBALS`; every failure is a CheckpointError
    whose message tells a missing file, a folder, an empty file, an unsafe pickle and a corrupt file apart."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the checkpoint file inside it")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes), e.g. from a copy or save that did not "
                              "finish; re-create it")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"GLOBAL\s+([\w.]+)", str(err))
        if unsafe:
            raise CheckpointError(
                f"checkpoint {path} is unsafe: it names {unsafe.group(1)}, which is not on the allow-list of "
                "data-only types and could run code when unpickled, so it is not loaded (re-save its state dict "
                "from a trusted session with torch.save(model.state_dict(), path))") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_torch_reason(err)}); re-download or "
                              "re-create it") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_torch_reason(err)}); re-download or "
                              "re-create it") from None


def select_state_dict(
    checkpoint: Any, entry: str | None = None, prefer_ema: bool = False, strip_prefixes: Iterable[str] = ("module.",)
) -> dict[str, torch.Tensor]:
    """The model weights inside a checkpoint, with wrapper prefixes removed.

    ``entry`` names the key to use; otherwise ``state_dict_ema``/``model_ema`` when ``prefer_ema`` and present,
    then ``state_dict``/``model``/``net``/``module``, else the checkpoint itself if it is already a state dict.
    """
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"expected a dict of tensors or a training checkpoint, got {type(checkpoint).__name__}")
    if entry is not None:
        if entry not in checkpoint:
            raise CheckpointError(f"the checkpoint has no '{entry}' entry (it has: {', '.join(map(str, checkpoint))})")
        state = checkpoint[entry]
    else:
        order = (EMA_ENTRIES if prefer_ema else ()) + STATE_DICT_ENTRIES
        state = next((checkpoint[k] for k in order if isinstance(checkpoint.get(k), Mapping)), checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            "could not find a state dict (a mapping of names to tensors) in the checkpoint; its top-level keys "
            f"are: {', '.join(map(str, list(checkpoint)[:10]))}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


@dataclass
class LoadReport:
    """What loading a state dict into a model did, key by key."""

    source: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        if self.clean:
            return f"{self.source}: all keys matched"
        lines = [f"{self.source}:"]

        def listing(title: str, keys: list[str]) -> None:
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")

        listing("missing in checkpoint", self.missing)
        listing("unexpected in checkpoint", self.unexpected)
        listing("shape mismatch", [f"{k} checkpoint {list(c)} vs model {list(m)}" for k, c, m in self.mismatched])
        return "\n".join(lines)


def compare_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
                       ) -> LoadReport:
    """The missing, unexpected and shape-mismatched keys of ``state_dict`` for ``model``, without loading."""
    own = model.state_dict()
    report = LoadReport(source=source)
    report.missing = [k for k in own if k not in state_dict]
    report.unexpected = [k for k in state_dict if k not in own]
    report.mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                         if k in own and v.shape != own[k].shape]
    return report


def load_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True, source: str = "checkpoint"
) -> LoadReport:
    """Load ``state_dict`` into ``model`` and report the differences.

    With ``strict`` any difference is a :class:`CheckpointError` and the model is left untouched. Without it,
    the keys that match in name and shape are loaded and the rest are listed in the returned report.
    """
    own = model.state_dict()
    report = compare_state_dict(model, state_dict, source)
    if strict and not report.clean:
        raise CheckpointError(
            f"the checkpoint does not fit this model ({type(model).__name__}); check that --model (or the "
            f"architecture flags) match the checkpoint.\n{report}")
    bad = {k for k, _, _ in report.mismatched}
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own and k not in bad}, strict=False)
    return report


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    entry: str | None = None,
    prefer_ema: bool = False,
    strict: bool = True,
    filter_fn: Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]] | None = None,
) -> LoadReport:
    """Load released weights (a raw state dict or a training checkpoint of any of the original repositories).

    ``filter_fn(state_dict, model)`` converts foreign layouts (timm's ``checkpoint_filter_fn`` convention),
    e.g. renaming keys or dropping a classifier head before a non-strict load.
    """
    state = select_state_dict(load_checkpoint_file(path), entry=entry, prefer_ema=prefer_ema)
    if filter_fn is not None:
        state = filter_fn(state, model)
    return load_state_dict(model, state, strict=strict, source=str(path))
