"""Seeds that are pure functions of the run's position, and the global RNG states as JSON.

Every random draw of a training run is seeded from `derive_seed` `(seed, ...)`, so a
resumed run repeats an uninterrupted one exactly; `rng_state` / `set_rng_state`
carry python's, numpy's and torch's global generators through a checkpoint (base64 and lists,
never pickle).
"""

from __future__ import annotations

import base64
import hashlib
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError

__all__ = [
    "derive_seed",
    "deterministic_algorithms",
    "rng_state",
    "seed_everything",
    "set_rng_state",
]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that is a pure function of `parts` (stable across runs and platforms)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global RNG states as JSON-ready values (base64 / lists; never pickle)."""
    np_state: Any = np.random.get_state()  # (kind, keys, pos, has_gauss, cached_gaussian)
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii"),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": base64.b64encode(np.asarray(np_state[1], dtype=np.uint32).tobytes()).decode(
                "ascii"
            ),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [
            base64.b64encode(s.numpy().tobytes()).decode("ascii")
            for s in torch.cuda.get_rng_state_all()
        ]
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    try:
        raw = base64.b64decode(state["torch"])
        torch.set_rng_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
        npy = state["numpy"]
        keys = np.frombuffer(base64.b64decode(npy["keys"]), dtype=np.uint32).copy()
        np.random.set_state(
            (npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
        )
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(
                [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in cuda]
            )
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's RNG states cannot be restored: {exc}") from exc


@contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """`torch.use_deterministic_algorithms(True)` inside the block when `enabled` (warn
    only on CUDA, where some kernels have no deterministic version); the previous setting
    is restored on the way out. With `enabled=False` nothing changes."""
    prev = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        if enabled:
            torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        yield
    finally:
        if enabled:
            torch.use_deterministic_algorithms(prev, warn_only=prev_warn)
