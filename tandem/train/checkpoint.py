"""Checkpoints: models, optimisers, schedulers, RNG states and the step, written atomically.

``OUT/checkpoints/step-0000123/`` holds one checkpoint; ``OUT/checkpoints/latest`` names the newest
complete one and is replaced only after its directory is in place, so a crash never leaves a
half-written checkpoint as the latest.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.errors import IncompatibleArtifactError
from tandem.io import atomic_dir, atomic_open, manifest, read_json, sha256_file


def rng_states() -> dict[str, Any]:
    py = random.getstate()
    return {"python": [py[0], list(py[1]), py[2]], "numpy": np.random.get_state()[1].tolist(),
            "numpy_pos": int(np.random.get_state()[2])}


def set_rng_states(states: dict[str, Any], torch_state: torch.Tensor, cuda_states: list | None) -> None:
    py = states["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(("MT19937", np.asarray(states["numpy"], dtype=np.uint32), states["numpy_pos"], 0, 0.0))
    torch.set_rng_state(torch_state)
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(root: Path, step: int, tensors: dict[str, Any], state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``root/step-NNNNNNN`` atomically, point ``root/latest`` at it, prune old ones."""
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    with atomic_dir(root / name) as tmp:
        torch.save(tensors, tmp / "state.pt")
        torch.save({"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "rng.pt")
        sums = {f: sha256_file(tmp / f) for f in ("state.pt", "rng.pt")}  # verified on resume
        with atomic_open(tmp / "state.json") as f:
            json.dump(manifest("checkpoint", step=step, rng=rng_states(), sha256=sums, **state), f)
    with atomic_open(root / "latest") as f:
        f.write(name + "\n")
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[: max(0, len(done) - keep)]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return root / name


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: Path, expect: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors and state of a checkpoint; refuse one made with another config or models."""
    state = read_json(path / "state.json")
    if not isinstance(state, dict) or "rng" not in state:
        raise IncompatibleArtifactError(f"{path}/state.json: not a tandem checkpoint's state; start afresh without "
                                        "--resume, or delete the checkpoint")
    for name, want in (state.get("sha256") or {}).items():  # checkpoints written before checksums have none
        if sha256_file(path / name) != want:
            raise IncompatibleArtifactError(f"{path}/{name}: checksum differs from state.json's (the file is damaged); "
                                            "start afresh without --resume, or delete the checkpoint")
    diffs = [f"{k}: checkpoint {state.get(k)!r} != now {v!r}" for k, v in expect.items() if state.get(k) != v]
    if diffs:
        raise IncompatibleArtifactError(f"{path}: cannot resume, the checkpoint was made differently ("
                                        + "; ".join(diffs) + "). Use a new --out or the original settings")
    # weights_only: a checkpoint holds tensors, numbers, strings and containers alone, so loading one from
    # elsewhere cannot run code (a full unpickle could)
    try:
        tensors = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        raise IncompatibleArtifactError(f"{path}: not a loadable tandem checkpoint ({type(e).__name__}: "
                                        f"{str(e).splitlines()[0] if str(e) else ''}); start afresh without "
                                        "--resume, or delete the checkpoint") from None
    set_rng_states(state["rng"], rng["torch"], rng["cuda"])
    return tensors, state
