"""Serialisation, hashing and validation of model states."""

import cbor2
import pytest
import torch

from learning.model import ModelSpec, initial_state
from learning.tensors import (
    decode_state,
    encode_state,
    state_add,
    state_bytes,
    state_from_bytes,
    state_hash,
    state_sub,
)


def _state() -> dict[str, torch.Tensor]:
    return {
        "b": torch.tensor([1.5, -2.0], dtype=torch.float32),
        "a": torch.arange(6, dtype=torch.float64).reshape(2, 3),
        "c": torch.tensor(7, dtype=torch.int64),  # 0-d scalar
        "e": torch.zeros(0, 4, dtype=torch.float32),  # empty
    }


def test_roundtrip_preserves_values_dtypes_shapes():
    s = _state()
    back = state_from_bytes(state_bytes(s))
    assert sorted(back) == sorted(s)
    for k in s:
        assert back[k].dtype == s[k].dtype and back[k].shape == s[k].shape
        assert torch.equal(back[k], s[k])
    back["b"][0] = 99.0  # must be a writable copy
    assert s["b"][0] == 1.5


def test_roundtrip_model_state_and_encode_format():
    s = initial_state(ModelSpec(), seed=3)
    enc = encode_state(s)
    assert enc["0.weight"]["dtype"] == "float32" and enc["0.weight"]["shape"] == [64, 64]
    assert isinstance(enc["0.weight"]["data"], bytes)
    back = decode_state(cbor2.loads(cbor2.dumps(enc)))
    assert all(torch.equal(back[k], s[k]) for k in s)


def test_hash_stable_and_order_independent():
    s = _state()
    reordered = {k: s[k].clone() for k in reversed(list(s))}
    assert state_bytes(s) == state_bytes(reordered)
    assert state_hash(s) == state_hash(reordered)
    assert len(state_hash(s)) == 32
    assert state_hash(initial_state(ModelSpec(), 1)) == state_hash(initial_state(ModelSpec(), 1))
    changed = dict(s, b=torch.tensor([1.5, -2.5]))
    assert state_hash(changed) != state_hash(s)


def _good() -> dict:
    return {"w": {"dtype": "float32", "shape": [2, 2], "data": bytes(16)}}


@pytest.mark.parametrize(
    "bad",
    [
        [1, 2],
        "nope",
        None,
        {1: _good()["w"]},
        {"w": [1, 2]},
        {"w": {"dtype": "float32", "shape": [2, 2]}},
        {"w": {**_good()["w"], "extra": 1}},
        {"w": {**_good()["w"], "dtype": "float16"}},
        {"w": {**_good()["w"], "dtype": "object"}},
        {"w": {**_good()["w"], "shape": [2, -2]}},
        {"w": {**_good()["w"], "shape": [2.0, 2]}},
        {"w": {**_good()["w"], "shape": [True, 4]}},
        {"w": {**_good()["w"], "shape": (2, 2)}},
        {"w": {**_good()["w"], "shape": [4, 4]}},  # shape / data length mismatch
        {"w": {**_good()["w"], "data": bytes(15)}},  # wrong data length
        {"w": {**_good()["w"], "data": "x" * 16}},
    ],
)
def test_decode_rejects_malformed(bad):
    with pytest.raises(ValueError):
        decode_state(bad)


def test_decode_rejects_oversize_total():
    obj = {
        "a": {"dtype": "float32", "shape": [3], "data": bytes(12)},
        "b": {"dtype": "float32", "shape": [3], "data": bytes(12)},
    }
    assert len(decode_state(obj, max_elements=6)) == 2
    with pytest.raises(ValueError, match="max_elements"):
        decode_state(obj, max_elements=5)
    huge = {"h": {"dtype": "float64", "shape": [2**40, 2**40, 2**40], "data": b""}}
    with pytest.raises(ValueError, match="max_elements"):
        decode_state(huge)


def test_state_from_bytes_rejects_garbage():
    for b in (b"", b"\xff\xff\xff", b"\x9f", cbor2.dumps([1, 2])):
        with pytest.raises(ValueError):
            state_from_bytes(b)


def test_sub_add_and_key_mismatch():
    a = {"x": torch.tensor([3.0, 5.0]), "y": torch.tensor([1.0])}
    b = {"x": torch.tensor([1.0, 1.0]), "y": torch.tensor([4.0])}
    d = state_sub(a, b)
    assert torch.equal(d["x"], torch.tensor([2.0, 4.0]))
    assert torch.equal(d["y"], torch.tensor([-3.0]))
    s = state_add(d, b)
    assert all(torch.equal(s[k], a[k]) for k in a)
    with pytest.raises(ValueError):
        state_sub(a, {"x": b["x"]})
    with pytest.raises(ValueError):
        state_add(a, {"x": b["x"], "z": b["y"]})
    with pytest.raises(ValueError):
        state_sub(a, {"x": torch.zeros(3), "y": b["y"]})
