"""Local SGD training and evaluation."""

from __future__ import annotations

import torch

from learning.data import Dataset
from learning.model import ModelSpec, build_model, load_state, model_state
from learning.tensors import ModelState


def _model_from(spec: ModelSpec, state: ModelState) -> torch.nn.Module:
    # Init seed is irrelevant: every parameter is overwritten by state.
    model = build_model(spec, seed=0)
    load_state(model, state)
    return model


def train_local(
    spec: ModelSpec,
    global_state: ModelState,
    data: Dataset,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> ModelState:
    """Train from global_state with plain SGD + cross-entropy; return the full trained state."""
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"bad hyper-parameters: epochs={epochs} lr={lr} batch_size={batch_size}")
    model = _model_from(spec, global_state)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(data.x[batch]), data.y[batch])
            loss.backward()
            opt.step()
    return model_state(model)


def evaluate(spec: ModelSpec, state: ModelState, data: Dataset) -> float:
    """Classification accuracy of state on data, in [0, 1]."""
    if len(data) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    model = _model_from(spec, state)
    model.eval()
    with torch.no_grad():
        pred = model(data.x).argmax(dim=1)
    return float((pred == data.y).sum().item()) / len(data)
