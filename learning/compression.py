"""Update compression: a trainer's update as a compressed delta over the round's base model.

The genesis `compression` setting picks one codec for the whole network (`UpdateCodec`):

* ``none``: the update is the trained state itself (learning.tensors' tensor map), as before;
* ``fp16``: every float tensor's delta (trained - base) as IEEE half floats;
* ``int8``: every float tensor's delta as signed bytes q in [-127, 127] and one float32 scale
  per tensor (symmetric: scale = max|delta| / 127, q = round-half-even(delta / scale));
* ``topk``: of every float tensor's delta only the `fraction` largest in magnitude (indices
  and float32 values); the trainer keeps what it did not send and adds it to its next delta
  (error feedback, `encode_with_feedback`).

Non-float tensors and scalars (0-dimensional tensors: batch-norm's `num_batches_tracked`
counter, which model states hold as a float32 scalar) travel uncompressed, as their trained
value exactly (the entry learning.tensors writes), so counters survive every codec. Deltas, not weights, are compressed: a delta's range is small, so 8 bits per
element lose little of it.

Scoring and aggregation are defined on what was sent: every peer decodes the received bytes
with `decode_delta` against the same base model and gets the same tensors, bit for bit
(float32 arithmetic in numpy, one operation at a time: the product q * scale rounded, then the
sum with the base rounded). The encoder is deterministic too (no stochastic rounding).

Pure: numpy and torch only, no trio, libp2p, clock or disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cbor2
import numpy as np
import torch

from gossip.cbor_profile import CborProfileError, decode_canonical
from learning.tensors import ModelState, encode_state

#: The codecs a genesis may name.
CODECS = ("none", "fp16", "int8", "topk")

#: Names of the tensor dtypes on the wire, and their little-endian numpy dtypes.
_NP = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8"), "int64": np.dtype("<i8"),
       "float16": np.dtype("<f2"), "int8": np.dtype("i1"), "uint32": np.dtype("<u4")}
_NAME = {torch.float32: "float32", torch.float64: "float64", torch.int64: "int64"}
_FLOATS = ("float32", "float64")
_FP16_MAX = float(np.finfo(np.float16).max)
_SCALE = np.dtype("<f4")


@dataclass(frozen=True)
class UpdateCodec:
    """How a network's updates are encoded (the genesis `compression` setting)."""

    name: str = "none"
    #: topk only: the share of each float tensor's elements sent, in (0, 1]
    fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.name!r}")
        if self.name == "topk":
            if not (isinstance(self.fraction, (int, float)) and 0 < self.fraction <= 1):
                raise ValueError(f"topk fraction must be in (0, 1], got {self.fraction!r}")
        elif self.fraction:
            raise ValueError(f"a fraction is a topk setting, not one of {self.name}")

    @classmethod
    def from_settings(cls, settings: Any) -> UpdateCodec:
        """The codec of a genesis `compression` map ({} or absent: none); ValueError if bad."""
        if not settings:
            return cls()
        if not isinstance(settings, dict):
            raise ValueError("compression must be a map like {\"codec\": \"int8\"}")
        unknown = set(settings) - {"codec", "fraction"}
        if unknown or "codec" not in settings:
            raise ValueError(f"compression takes keys codec and (topk) fraction, got "
                             f"{sorted(settings)}")
        if not isinstance(settings["codec"], str):
            raise ValueError("compression.codec must be text")
        fraction = settings.get("fraction", 0.0)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise ValueError("compression.fraction must be a number")
        return cls(settings["codec"], float(fraction))

    @classmethod
    def from_text(cls, text: str) -> UpdateCodec:
        """`none`, `fp16`, `int8` or `topk:<fraction>` (command-line options)."""
        name, _, fraction = text.partition(":")
        return cls(name, float(fraction) if fraction else 0.0)

    def __str__(self) -> str:
        return f"topk:{self.fraction:g}" if self.name == "topk" else self.name

    def to_settings(self) -> dict[str, Any]:
        """The genesis `compression` map ({} for none, so old genesis files keep their id)."""
        if self.name == "none":
            return {}
        if self.name == "topk":
            return {"codec": "topk", "fraction": self.fraction}
        return {"codec": self.name}

    @property
    def compresses(self) -> bool:
        """False for `none`: the update is then the plain trained state."""
        return self.name != "none"


def _kept(numel: int, fraction: float) -> int:
    """Elements of a tensor a topk update sends: ceil(fraction * numel), at least one."""
    return min(numel, max(1, math.ceil(fraction * numel))) if numel else 0


def _check_layout(base: ModelState, state: ModelState) -> None:
    if set(base) != set(state):
        raise ValueError(f"state keys differ from the base: {sorted(set(base) ^ set(state))}")
    for k in base:
        if state[k].shape != base[k].shape or state[k].dtype != base[k].dtype:
            raise ValueError(f"tensor {k!r} differs from the base in shape or dtype")
        if base[k].dtype not in _NAME:
            raise ValueError(f"tensor {k!r}: unsupported dtype {base[k].dtype}")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().contiguous().numpy()


def _exact(dname: str, shape: list[int]) -> bool:
    """Whether a tensor of this dtype and shape travels uncompressed: non-float or scalar."""
    return dname not in _FLOATS or not shape


def _encode_tensor(base: np.ndarray, value: np.ndarray, dname: str,
                   codec: UpdateCodec) -> dict[str, Any]:
    """The wire entry of one tensor (`dname`: the base tensor's dtype)."""
    shape = list(base.shape)
    if _exact(dname, shape):  # counters and integer buffers: the value itself, exact
        return {"dtype": dname, "shape": shape, "data": value.astype(_NP[dname]).tobytes()}
    flat = (value - base).reshape(-1)
    if codec.name == "fp16":
        half = np.clip(flat, -_FP16_MAX, _FP16_MAX).astype(_NP["float16"])
        return {"dtype": "float16", "shape": shape, "data": half.tobytes()}
    if codec.name == "int8":
        peak = float(np.max(np.abs(flat))) if flat.size else 0.0
        scale = np.float32(peak / 127.0)
        if scale > 0:
            q = np.clip(np.rint(flat.astype(np.float64) / np.float64(scale)), -127, 127)
        else:
            q = np.zeros(flat.shape)
        return {"dtype": "int8", "shape": shape, "data": q.astype(_NP["int8"]).tobytes(),
                "scale": np.array([scale], dtype=_SCALE).tobytes()}
    # topk: the k largest magnitudes, ties to the lower index; indices sent in increasing order
    k = _kept(flat.size, codec.fraction)
    order = np.argsort(-np.abs(flat.astype(np.float64)), kind="stable")[:k]
    index = np.sort(order).astype(_NP["uint32"])
    return {"dtype": "float32", "shape": shape, "index": index.tobytes(),
            "data": flat[index].astype(_NP["float32"]).tobytes()}


def encode_delta(base: ModelState, state: ModelState, codec: UpdateCodec) -> dict[str, Any]:
    """The wire tensor map of `state` as a `codec` delta over `base` (a compressing codec)."""
    if not codec.compresses:
        raise ValueError("codec none sends the state itself (learning.tensors.encode_state)")
    _check_layout(base, state)
    out: dict[str, Any] = {}
    for name in sorted(base):
        out[name] = _encode_tensor(_np(base[name]), _np(state[name]), _NAME[base[name].dtype],
                                   codec)
    return out


def _bytes_of(entry: dict, key: str, dtype: np.dtype, count: int, shown: str) -> np.ndarray:
    data = entry[key]
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError(f"tensor {shown}: {key} must be bytes")
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"tensor {shown}: {key} has {len(data)} bytes, expected "
                         f"{count * dtype.itemsize}")
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("="), copy=True)


def _entry_keys(dname: str, shape: list[int],
                codec: UpdateCodec) -> tuple[str, frozenset[str]]:
    """The wire dtype and the keys of the entry a base tensor of `dname` and `shape` needs."""
    plain = frozenset({"dtype", "shape", "data"})
    if _exact(dname, shape):
        return dname, plain
    if codec.name == "fp16":
        return "float16", plain
    if codec.name == "int8":
        return "int8", plain | {"scale"}
    return "float32", plain | {"index"}


def _decode_tensor(base: torch.Tensor, entry: Any, codec: UpdateCodec, shown: str) -> np.ndarray:
    """base + the entry's delta, as a numpy array of the base's dtype and shape."""
    dname = _NAME[base.dtype]
    wire, keys = _entry_keys(dname, list(base.shape), codec)
    if not isinstance(entry, dict) or set(entry) != keys:
        raise ValueError(f"tensor {shown}: entry must be a map with keys {sorted(keys)}")
    if entry["dtype"] != wire:
        raise ValueError(f"tensor {shown}: dtype must be {wire!r} under codec {codec.name}")
    if entry["shape"] != list(base.shape):  # compared before any arithmetic on it
        raise ValueError(f"tensor {shown}: shape differs from the model's")
    own = _NP[dname].newbyteorder("=")
    b = _np(base).astype(own, copy=True)
    numel = b.size
    if _exact(dname, list(base.shape)):
        return _bytes_of(entry, "data", _NP[dname], numel, shown).reshape(b.shape)
    if codec.name == "fp16":
        delta = _bytes_of(entry, "data", _NP["float16"], numel, shown)
        if not np.isfinite(delta).all():
            raise ValueError(f"tensor {shown}: non-finite half floats")
        return b + delta.astype(own).reshape(b.shape)
    if codec.name == "int8":
        q = _bytes_of(entry, "data", _NP["int8"], numel, shown)
        scale = _bytes_of(entry, "scale", _SCALE, 1, shown)
        if not (np.isfinite(scale).all() and scale[0] >= 0):
            raise ValueError(f"tensor {shown}: scale must be finite and >= 0")
        if (q == -128).any():
            raise ValueError(f"tensor {shown}: int8 value -128 (the range is -127..127)")
        delta = q.astype(np.float32) * scale[0]  # float32 product, rounded once
        return b + delta.astype(own).reshape(b.shape)
    k = _kept(numel, codec.fraction)
    index = _bytes_of(entry, "index", _NP["uint32"], k, shown).astype(np.int64)
    values = _bytes_of(entry, "data", _NP["float32"], k, shown)
    if k and (index[-1] >= numel or (k > 1 and not (np.diff(index) > 0).all())):
        raise ValueError(f"tensor {shown}: indices must increase strictly and stay in range")
    if not np.isfinite(values).all():
        raise ValueError(f"tensor {shown}: non-finite values")
    flat = b.reshape(-1)
    flat[index] = flat[index] + values.astype(own)
    return flat.reshape(b.shape)


def decode_delta(base: ModelState, obj: Any, codec: UpdateCodec) -> ModelState:
    """The full state an untrusted wire delta `obj` stands for: base + decoded delta, every
    tensor of the base's dtype and shape. ValueError says what is malformed."""
    if not codec.compresses:
        raise ValueError("codec none sends the state itself (learning.tensors.decode_state)")
    if not isinstance(obj, dict):
        raise ValueError(f"delta must be a map, got {type(obj).__name__}")
    if not all(isinstance(name, str) for name in obj) or set(obj) != set(base):
        raise ValueError("delta names other tensors than the model's")
    out: ModelState = {}
    for name in sorted(base):
        arr = _decode_tensor(base[name], obj[name], codec, repr(name[:40]))
        out[name] = torch.from_numpy(arr).to(base[name].dtype)
    return out


def delta_bytes(base: ModelState, state: ModelState, codec: UpdateCodec) -> bytes:
    """Canonical CBOR bytes of `encode_delta` (what a blob update carries)."""
    return cbor2.dumps(encode_delta(base, state, codec), canonical=True)


def delta_from_bytes(base: ModelState, data: bytes, codec: UpdateCodec) -> ModelState:
    """`decode_delta` of canonical profile CBOR bytes (a fetched blob); ValueError if bad."""
    try:
        obj = decode_canonical(data)
    except CborProfileError as exc:
        raise ValueError(f"invalid CBOR delta: {exc}") from None
    return decode_delta(base, obj, codec)


def encoded_size(base: ModelState, codec: UpdateCodec) -> int:
    """Bytes of any update's encoding under `codec`: fixed by the model's layout."""
    if not codec.compresses:
        return len(cbor2.dumps(encode_state(base), canonical=True))
    return len(delta_bytes(base, base, codec))


def encode_with_feedback(base: ModelState, state: ModelState, codec: UpdateCodec,
                         residual: ModelState | None) -> tuple[dict[str, Any], ModelState | None]:
    """Encode `state` with error feedback (topk): the residual of earlier rounds (what was
    not sent) is added to this delta before it is compressed, and what is not sent now is
    the new residual. Other codecs keep no residual (None). Returns (wire map, residual)."""
    if codec.name != "topk":
        return encode_delta(base, state, codec), None
    _check_layout(base, state)
    target = {k: state[k] + residual[k] if residual is not None and k in residual
              and residual[k].shape == state[k].shape and base[k].is_floating_point()
              else state[k] for k in base}
    obj = encode_delta(base, target, codec)
    sent = decode_delta(base, obj, codec)
    left = {k: (target[k] - sent[k]) for k in base if base[k].is_floating_point()}
    return obj, left


def round_trip(base: ModelState, state: ModelState, codec: UpdateCodec,
               residual: ModelState | None = None) -> tuple[ModelState, ModelState | None]:
    """What every receiver decodes of `state` sent under `codec` (the state itself for none),
    and the sender's new residual: the simulation harness's view of the wire."""
    if not codec.compresses:
        return state, None
    obj, left = encode_with_feedback(base, state, codec, residual)
    return decode_delta(base, obj, codec), left
