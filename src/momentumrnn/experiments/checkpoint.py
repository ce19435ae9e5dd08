"""Checkpoints: weights in safetensors, optimizer and progress state beside them.

Layout under ``RUN_DIR/checkpoints``::

    latest                      the name of the current checkpoint folder
    step-00001234/
        model.safetensors       the weights at that step
        best.safetensors        the weights at the best validation so far (when there is one)
        state.pt                optimizer state, progress counters, RNG states, and the
                                SHA-256 of each weights file

A checkpoint folder is written under a temporary name and renamed into place, then
``latest`` is replaced (write, then rename): a run killed at any moment leaves the
previous checkpoint intact. ``state.pt`` is read with ``torch.load(weights_only=True)``;
nothing else is unpickled. Unreadable files, a weights file whose digest differs from
the one recorded (a flipped byte) or that is missing, files from two different saves and
checkpoints of a differently configured run raise ``CheckpointError`` naming the file
or the difference. (Checkpoints of format 1 have no digests; they are read unchecked.)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from .data import sha256 as _sha256

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "has_checkpoint", "atomic_write_text",
           "atomic_write_json"]

FORMAT = 2
#: Formats this version reads: 1 (no digests of the weights files) and 2.
READABLE = (1, 2)
WEIGHTS_FILES = ("model.safetensors", "best.safetensors")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or belongs to another configuration."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value) -> None:
    """``value`` as indented JSON with a final newline, written as ``atomic_write_text``."""
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "latest").exists()


def save_checkpoint(run_dir: Path, *, model_state: dict, best_state: dict | None, optimizer_state: dict,
                    progress: dict, rng: dict, fingerprint: str, identity: dict) -> Path:
    """Write a checkpoint of step ``progress["step"]`` and make it the latest; return its folder."""
    from safetensors.torch import save_file

    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    meta = {"format": str(FORMAT), "fingerprint": fingerprint, "token": token, "step": str(progress["step"])}
    tmp = root / f".tmp-{token[:12]}"
    tmp.mkdir()
    save_file(_cpu(model_state), tmp / "model.safetensors", metadata=meta)
    if best_state is not None:
        save_file(_cpu(best_state), tmp / "best.safetensors", metadata=meta)
    digests = {name: _sha256(tmp / name) for name in WEIGHTS_FILES if (tmp / name).exists()}
    torch.save({"format": FORMAT, "fingerprint": fingerprint, "token": token, "identity": identity,
                "digests": digests, "optimizer": optimizer_state, "progress": progress, "rng": rng},
               tmp / "state.pt")
    for file in tmp.iterdir():
        with open(file, "rb") as f:
            os.fsync(f.fileno())
    final = root / f"step-{progress['step']:08d}-{token[:8]}"
    os.rename(tmp, final)
    atomic_write_text(root / "latest", final.name + "\n")
    for old in root.iterdir():                      # earlier checkpoints and leftovers of killed saves
        if old.is_dir() and old.name != final.name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _read_safetensors(path: Path, token: str) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as error:                      # safetensors raises its own error types
        raise CheckpointError(f"checkpoint file {path} is corrupt or unreadable: {error}") from None
    if meta.get("token") != token:
        raise CheckpointError(f"checkpoint file {path} does not belong to {path.parent / 'state.pt'} "
                              f"(written by a different save)")
    return tensors


def load_checkpoint(run_dir: Path, *, fingerprint: str, identity: dict) -> dict:
    """Read the latest checkpoint of ``run_dir``: returns ``model_state``, ``best_state``
    (or None), ``optimizer_state``, ``progress``, ``rng`` and ``path``. Raises
    ``CheckpointError`` when it is missing, unreadable or of another configuration."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.exists():
        raise CheckpointError(f"no checkpoint to resume from: {pointer} does not exist")
    folder = root / pointer.read_text().strip()
    if not folder.is_dir() or not pointer.read_text().strip():
        raise CheckpointError(f"{pointer} names checkpoint folder {folder}, which does not exist")
    state_path = folder / "state.pt"
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:                      # truncated, garbage, or needs unpickling
        raise CheckpointError(f"checkpoint file {state_path} is corrupt or unreadable: {error}") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE:
        raise CheckpointError(f"checkpoint file {state_path} is not a momentumrnn checkpoint "
                              f"(format {' or '.join(map(str, READABLE))})")
    if state["fingerprint"] != fingerprint:
        diff = ", ".join(f"{k}: {state['identity'].get(k, '<absent>')!r} (checkpoint) vs "
                         f"{identity.get(k, '<absent>')!r} (run)"
                         for k in sorted(set(state["identity"]) | set(identity))
                         if state["identity"].get(k, "<absent>") != identity.get(k, "<absent>"))
        raise CheckpointError(f"checkpoint {folder} was written by a run with a different configuration: "
                              f"{diff or 'fingerprints differ'}")
    digests = state.get("digests")                  # format 2: every recorded file, unchanged
    for name in digests or ():
        if not (folder / name).exists():
            raise CheckpointError(f"checkpoint file {folder / name} is missing (recorded in {state_path}); "
                                  f"the weights it held are lost")
    model_state = _read_safetensors(folder / "model.safetensors", state["token"])
    best_path = folder / "best.safetensors"
    best_state = _read_safetensors(best_path, state["token"]) if best_path.exists() else None
    if digests is not None:
        for name in WEIGHTS_FILES:
            path = folder / name
            if name not in digests and path.exists():
                raise CheckpointError(f"checkpoint file {path} was not written with {state_path}")
            if name in digests and _sha256(path) != digests[name]:
                raise CheckpointError(f"checkpoint file {path} is corrupt: its SHA-256 differs from the one "
                                      f"recorded in {state_path}")
    return {"model_state": model_state, "best_state": best_state, "optimizer_state": state["optimizer"],
            "progress": state["progress"], "rng": state["rng"], "path": folder}
