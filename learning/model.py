"""MLP model specification, deterministic construction and state access."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from learning.tensors import ModelState


@dataclass(frozen=True)
class ModelSpec:
    """Layer widths of an MLP: input, hidden..., classes (Linear layers with ReLU between)."""

    layers: tuple[int, ...] = (64, 64, 10)

    def __post_init__(self) -> None:
        # Normalise lists (e.g. from JSON) to a tuple so the spec stays hashable and comparable.
        object.__setattr__(self, "layers", tuple(self.layers))
        if len(self.layers) < 2 or not all(
            isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in self.layers
        ):
            raise ValueError(f"layers must be >= 2 positive ints, got {self.layers!r}")

    def to_dict(self) -> dict:
        """JSON/CBOR-friendly representation."""
        return {"layers": list(self.layers)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """Inverse of to_dict; raises ValueError on malformed input."""
        if not isinstance(d, dict) or not isinstance(d.get("layers"), (list, tuple)):
            raise ValueError("model spec must be a dict with a 'layers' list")
        return cls(layers=tuple(d["layers"]))


def build_model(spec: ModelSpec, seed: int) -> torch.nn.Module:
    """Build the MLP with parameters initialised deterministically from seed. `spec` may
    also be a learning.task.Task: its model (so DP training and inversion take any task)."""
    if not isinstance(spec, ModelSpec):
        return spec.model(seed)
    mods: list[torch.nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(spec.layers, spec.layers[1:])):
        if i > 0:
            mods.append(torch.nn.ReLU())
        mods.append(torch.nn.Linear(fan_in, fan_out))
    model = torch.nn.Sequential(*mods)
    # Re-initialise from a private generator: torch's global RNG is shared by every thread of
    # the process, so a seed set on it can be consumed by training running concurrently (seen
    # with several peers in one process). Same distribution as nn.Linear's default:
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                bound = 1.0 / layer.in_features ** 0.5
                for p in (layer.weight, layer.bias):
                    p.copy_(torch.rand(p.shape, generator=g) * (2 * bound) - bound)
    return model


def model_state(model: torch.nn.Module) -> ModelState:
    """Detached float32 copies of the model's parameters and buffers, sorted by name."""
    sd = model.state_dict()
    return {k: sd[k].detach().to(torch.float32).clone() for k in sorted(sd)}


def load_state(model: torch.nn.Module, state: ModelState) -> None:
    """Copy state into model; keys must match exactly."""
    expected = set(model.state_dict())
    if set(state) != expected:
        raise ValueError(f"state keys differ from model: {sorted(set(state) ^ expected)}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shape mismatches surface as RuntimeError
        raise ValueError(f"state does not fit model: {e}") from e


def initial_state(spec: ModelSpec, seed: int) -> ModelState:
    """Initial global model state for a run, deterministic in (spec, seed)."""
    return model_state(build_model(spec, seed))
