"""What the network trains: a task says how to build the model, read a peer's own data, train
locally and evaluate. See docs/tasks.md ("train your own model").

A task is a class deriving from `Task` (the built-ins are in learning/builtin_tasks.py):

- `build_model(seed)`: any `torch.nn.Module`. Every Linear/Conv weight and bias is then re-drawn
  from the genesis seed (`deterministic_init`), so all peers start from the same bytes; any other
  parameter or buffer must come out of the constructor the same on every peer (batch-norm's do).
- `read_file(path)`: a peer's OWN data as a `Dataset` (features float32 [n, ...], labels int64
  [n]); the default reads CSV (header row, label in column `label_column`, the rest numeric
  features) and NPZ (arrays `x` and `y`). Never shipped in the genesis.
- `train(model, data, training, seed)`: local training in place (default: SGD + cross-entropy
  with the genesis `training` epochs, lr, batch_size).
- `evaluate(model, data)`: named metrics, e.g. {"accuracy": 0.93} or {"auc": .., "ks": ..}.
- `demo_data(seed, settings)`: optional; a bundled data set as (train, test, groups) that the
  genesis shards among peers for `p2p-node demo` (groups: per-row "institution" keys of the
  train and test rows for a non-IID split, or None to split as the genesis `data.partition`
  says).

It is found by name (`BUILTIN_TASKS`), by import path (`package.module:Class`) or by file
(`path/to/my_task.py:Class`, or just the file when it defines one Task subclass). The genesis pins
it as {"name", "version", "hash"}: `task_hash` is the SHA-256 of the file that defines the task
class, so a peer running other code is refused at start (`check_pinned`) instead of being left
to disagree on model hashes.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import importlib.util
import inspect
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learning.data import Dataset, _dataset, shard_indices, subset
from learning.tensors import ModelState

#: module:Class of the tasks shipped with the package, by name
BUILTIN_TASKS = {"digits": "learning.builtin_tasks:DigitsTask",
                 "cnn": "learning.builtin_tasks:DigitsCnnTask",
                 "credit": "learning.builtin_tasks:CreditTask"}
#: share of a peer's own file kept back for federated evaluation
HELD_OUT_FRACTION = 0.25


#: per-row group keys of (train, test) for a by-institution split, or None
Groups = "tuple[np.ndarray, np.ndarray] | None"


class TaskError(ValueError):
    """A task that cannot be found, loaded or used; the text says which and why."""


class Task:
    """A learning task. Subclasses set `name`, `version` and override `build_model`."""

    name: str = "task"
    version: str = "0"
    #: CSV column holding the label (default read_file); the other columns are features
    label_column: str = "label"
    #: metrics where lower is better (federated evaluation's "worst peer" is then the highest)
    lower_is_better: tuple[str, ...] = ("loss",)

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        #: the genesis `model` settings (a task may read widths etc. from it)
        self.settings = dict(settings or {})

    # what a task defines ---------------------------------------------------------------------
    def build_model(self, seed: int) -> torch.nn.Module:
        raise NotImplementedError

    def read_file(self, path: Path) -> Dataset:
        return read_table(path, self.label_column)

    def train(self, model: torch.nn.Module, data: Dataset, training: dict[str, Any],
              seed: int) -> None:
        sgd_cross_entropy(model, data, int(training.get("epochs", 1)),
                          float(training.get("lr", 0.1)), int(training.get("batch_size", 16)),
                          seed)

    def evaluate(self, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
        with torch.no_grad():
            logits = model(data.x)
        return {"accuracy": float((logits.argmax(dim=1) == data.y).float().mean())}

    def loss(self, model: torch.nn.Module, data: Dataset) -> float:
        """The model's mean loss on data (what a judge of judged rounds compares candidate
        models by, learning.choice): cross-entropy unless the task says otherwise."""
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(data.x), data.y))

    def demo_data(self, seed: int, settings: dict[str, Any]
                  ) -> tuple[Dataset, Dataset, Groups]:
        raise TaskError(f"task {self.name!r} has no bundled data set: give each peer its own "
                        "file with `p2p-node run --data PATH`")

    # what the node calls (state in, state out) -----------------------------------------------
    def model(self, seed: int = 0) -> torch.nn.Module:
        """The model, initialised deterministically from seed."""
        model = self.build_model(seed)
        deterministic_init(model, seed)
        return model

    def model_from(self, state: ModelState) -> torch.nn.Module:
        from learning.model import load_state

        model = self.model(0)  # every parameter and buffer is overwritten by state
        load_state(model, state)
        return model

    def initial_state(self, seed: int) -> ModelState:
        from learning.model import model_state

        return model_state(self.model(seed))

    def train_state(self, base: ModelState, data: Dataset, training: dict[str, Any],
                    seed: int) -> ModelState:
        from learning.model import model_state

        model = self.model_from(base)
        model.train()
        self.train(model, data, training, seed)
        return keep_counters(model, base, model_state(model))

    def evaluate_state(self, state: ModelState, data: Dataset) -> dict[str, float]:
        if len(data) == 0:
            raise TaskError("cannot evaluate on an empty data set")
        model = self.model_from(state)
        model.eval()
        return {k: float(v) for k, v in self.evaluate(model, data).items()}

    def losses(self, states: list[ModelState], data: Dataset) -> list[float]:
        """`loss` of each model on data, one model object reloaded per state."""
        from learning.model import load_state

        model = self.model(0)
        model.eval()
        out = []
        for state in states:
            load_state(model, state)
            out.append(self.loss(model, data))
        return out

    def worse(self, metric: str, a: float, b: float) -> bool:
        """Whether value a of `metric` is worse than b."""
        return a > b if metric in self.lower_is_better else a < b

    def pin(self) -> dict[str, str]:
        """What the genesis records of this task."""
        return {"name": self.name, "version": str(self.version), "hash": task_hash(self)}


# finding a task --------------------------------------------------------------------------------
def load_task(ref: str, settings: dict[str, Any] | None = None) -> Task:
    """The task named by ref: a built-in name, `package.module:Class`, or `file.py[:Class]`."""
    ref = BUILTIN_TASKS.get(ref, ref)
    target, _, attr = ref.partition(":")
    if target.endswith(".py") or "/" in target:
        module = _module_from_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise TaskError(f"task {ref!r}: not a built-in ({', '.join(BUILTIN_TASKS)}) and "
                            f"cannot be imported: {exc}") from None
    if attr:
        cls = getattr(module, attr, None)
    else:
        found = [c for c in vars(module).values() if isinstance(c, type)
                 and issubclass(c, Task) and c is not Task and c.__module__ == module.__name__]
        cls = found[0] if len(found) == 1 else None
        if cls is None:
            raise TaskError(f"task {ref!r}: the module defines {len(found)} Task subclasses; "
                            "name one as FILE:Class")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TaskError(f"task {ref!r}: {attr!r} is not a learning.task.Task subclass")
    return cls(settings)


def _module_from_file(path: Path) -> Any:
    if not path.is_file():
        raise TaskError(f"task file not found: {path}")
    name = "cmfl_user_task_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise TaskError(f"task file {path} failed to load: {type(exc).__name__}: {exc}") from None
    return module


def task_hash(task: Task) -> str:
    """SHA-256 (hex) of the source file defining the task's class."""
    source = inspect.getsourcefile(type(task))
    if source is None:
        raise TaskError(f"task {task.name!r}: its source file cannot be found to pin it")
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()


def check_pinned(task: Task, pinned: dict[str, Any], where: str = "this peer") -> None:
    """TaskError (one line naming both) unless task is the one the genesis pins."""
    mine = task.pin()
    if any(str(pinned.get(k)) != mine[k] for k in ("name", "version", "hash")):
        raise TaskError(
            f"task mismatch: the genesis pins task {pinned.get('name')!r} version "
            f"{pinned.get('version')} hash {str(pinned.get('hash'))[:16]}, but {where} runs "
            f"task {mine['name']!r} version {mine['version']} hash {mine['hash'][:16]}")


def keep_counters(model: torch.nn.Module, base: ModelState, trained: ModelState) -> ModelState:
    """`trained` with the model's integer buffers (batch norm's num_batches_tracked) put back
    to their values in `base`. A counter is bookkeeping, not learned (batch norm uses it only
    without a momentum), yet it grows by the number of batches trained: left in an update, its
    delta (36 for a digits shard) dwarfs the weights' (about 1), so every two updates look
    parallel (the clone test then leaves them all out of the aggregate and the model never
    moves) and distances measure shard sizes instead of models."""
    counters = [name for name, b in model.named_buffers() if not b.is_floating_point()]
    return {k: base[k].clone() if k in counters else v for k, v in trained.items()}


# helpers a task can use ------------------------------------------------------------------------
def deterministic_init(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every Linear/Conv weight and bias from a private generator seeded by `seed`,
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as nn.Linear's default (torch's global RNG is shared by
    every thread, so a seed set on it can be consumed by training running concurrently)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():  # registration order: the same on every peer
            if not isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
                continue
            bound = 1.0 / module.weight[0].numel() ** 0.5
            for p in (module.weight, module.bias):
                if p is not None:
                    p.copy_(torch.rand(p.shape, generator=g) * (2 * bound) - bound)


def sgd_cross_entropy(model: torch.nn.Module, data: Dataset, epochs: int, lr: float,
                      batch_size: int, seed: int) -> None:
    """Plain SGD on cross-entropy, shuffled from seed (the digits task's training)."""
    if epochs < 0 or batch_size < 1 or not lr > 0:
        raise ValueError(f"bad hyper-parameters: epochs={epochs} lr={lr} batch_size={batch_size}")
    from learning.training import PlainSgd

    opt = PlainSgd(model.parameters(), lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(data)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            batch = order[start: start + batch_size]
            if len(batch) < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                      for m in model.modules()):
                continue  # batch norm cannot train on one sample
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(data.x[batch]), data.y[batch])
            loss.backward()
            opt.step()


def num_classes(task: Task, data: Dataset) -> int:
    """The width of the task model's output for a row of `data`: its number of classes (what
    a label-flipping attack flips within)."""
    model = task.model(0).eval()
    with torch.no_grad():
        return int(model(data.x[:1]).shape[-1])


def read_table(path: Path, label_column: str = "label") -> Dataset:
    """A CSV (header row; numeric columns; labels in `label_column`) or NPZ (`x`, `y`)."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"data file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:  # never unpickle a data file
            if "x" not in z or "y" not in z:
                raise TaskError(f"{path}: an NPZ data file needs arrays 'x' and 'y'")
            x, y = z["x"], z["y"]
    elif path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) < 2 or label_column not in rows[0]:
            raise TaskError(f"{path}: a CSV data file needs a header with a {label_column!r} "
                            "column and at least one row")
        col = rows[0].index(label_column)
        try:
            table = np.array([[float(v) for v in r] for r in rows[1:]], dtype=np.float64)
        except ValueError as exc:
            raise TaskError(f"{path}: non-numeric value ({exc}); the task's read_file must "
                            "encode such columns") from None
        y, x = table[:, col], np.delete(table, col, axis=1)
    else:
        raise TaskError(f"{path}: unknown data file type {path.suffix!r} (CSV or NPZ)")
    if len(x) != len(y) or len(y) == 0:
        raise TaskError(f"{path}: {len(x)} feature rows but {len(y)} labels")
    return _dataset(np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64))


def split_held_out(data: Dataset, seed: int, fraction: float = HELD_OUT_FRACTION
                   ) -> tuple[Dataset, Dataset]:
    """A peer's own data as (train, held-out), seeded; both non-empty."""
    n = len(data)
    if n < 2:
        raise TaskError(f"need at least 2 rows of local data, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 1, max(1, int(round(n * fraction))))
    return subset(data, np.sort(order[k:])), subset(data, np.sort(order[:k]))


def auc_ks(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """ROC AUC and the Kolmogorov-Smirnov statistic (max TPR - FPR) of scores for label 1;
    NaN when the labels hold one class only."""
    pos, neg = labels == 1, labels != 1
    if not pos.any() or not neg.any():
        return math.nan, math.nan
    order = np.argsort(-scores, kind="stable")
    s, pos_sorted = scores[order], pos[order]
    tps, fps = np.cumsum(pos_sorted), np.cumsum(~pos_sorted)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # ties: one ROC point per score
    tpr = np.r_[0.0, tps[last] / pos.sum()]
    fpr = np.r_[0.0, fps[last] / neg.sum()]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    return auc, float(np.max(tpr - fpr))


def demo_shard(task: Task, seed: int, settings: dict[str, Any], count: int, index: int
               ) -> tuple[Dataset, Dataset, Dataset]:
    """The demo's split of a task's bundled data: (this peer's train shard, its held-out
    shard, the global test split). Without groups the train shard is learning.data.shard's
    (as before tasks existed) and the held-out one the same partition of the test split; with
    groups each institution's rows go to the peers in the same seeded proportions in both."""
    train, test, groups = task.demo_data(seed, settings)
    partition, alpha = settings.get("partition", "iid"), float(settings.get("alpha", 0.5))
    if groups is None:
        tr = shard_indices(train.y.numpy(), count, seed, partition, alpha)[index]
        te = shard_indices(test.y.numpy(), count, seed, partition, alpha)[index]
    else:
        tr, te = (parts[index] for parts in split_by_group(*groups, count, seed, alpha))
    return subset(train, tr), subset(test, te), test


def split_by_group(train_groups: np.ndarray, test_groups: np.ndarray, count: int, seed: int,
                   alpha: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Train and test row indices per peer: each group's rows split among peers by one
    Dirichlet(alpha) draw per group, shared by train and test; every peer keeps >= 2 train
    and >= 1 test rows (topped up from the largest, deterministically)."""
    rng = np.random.default_rng(seed)
    out: tuple[list[list[int]], list[list[int]]] = ([[] for _ in range(count)],
                                                      [[] for _ in range(count)])
    for g in np.unique(np.r_[train_groups, test_groups]):
        props = np.cumsum(rng.dirichlet(np.full(count, alpha)))[:-1]
        for groups, shards in ((train_groups, out[0]), (test_groups, out[1])):
            idx = rng.permutation(np.flatnonzero(groups == g))
            for s, part in enumerate(np.split(idx, (props * len(idx)).astype(np.int64))):
                shards[s].extend(part.tolist())
    for shards, least in ((out[0], 2), (out[1], 1)):
        while True:
            small = min(range(count), key=lambda s: (len(shards[s]), s))
            if len(shards[small]) >= least:
                break
            large = max(range(count), key=lambda s: (len(shards[s]), -s))
            shards[small].append(shards[large].pop())
    return ([np.sort(np.asarray(s, dtype=np.int64)) for s in out[0]],
            [np.sort(np.asarray(s, dtype=np.int64)) for s in out[1]])
