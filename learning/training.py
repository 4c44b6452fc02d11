"""Local SGD training and evaluation."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from learning.data import Dataset
from learning.model import ModelSpec, build_model, load_state, model_state
from learning.tensors import ModelState


class PlainSgd:
    """SGD without momentum or weight decay: p <- p - lr * grad, the update torch.optim.SGD
    makes with those settings (the same single-tensor op, so the same bits).

    torch.optim imports torch._dynamo on its first use (~800 modules, ~1.5 s of CPU and ~100 MB
    per process), which every peer and client paid on its first round as a trainer."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr = lr

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.add_(p.grad, alpha=-self.lr)


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
    opt = PlainSgd(model.parameters(), lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            opt.zero_grad()
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
