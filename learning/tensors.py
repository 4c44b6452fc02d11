"""Model-state type, canonical (pickle-free) serialisation, hashing and arithmetic."""

from __future__ import annotations

import hashlib

import cbor2
import numpy as np
import torch

from gossip.cbor_profile import CborProfileError, decode_canonical

ModelState = dict[str, torch.Tensor]

# Explicit little-endian numpy dtypes so the wire format is independent of host byte order.
_DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float64": (torch.float64, np.dtype("<f8")),
    "int64": (torch.int64, np.dtype("<i8")),
}
_TORCH_TO_NAME = {t: name for name, (t, _) in _DTYPES.items()}
_ENTRY_KEYS = frozenset({"dtype", "shape", "data"})


def encode_state(state: ModelState) -> dict:
    """Encode a state as a cbor2-serialisable dict of {name: {dtype, shape, data}}."""
    out: dict = {}
    for name in sorted(state):
        if not isinstance(name, str):
            raise ValueError(f"tensor name must be str, got {type(name).__name__}")
        t = state[name].detach().cpu().contiguous()
        dname = _TORCH_TO_NAME.get(t.dtype)
        if dname is None:
            raise ValueError(f"tensor {name!r}: unsupported dtype {t.dtype}")
        np_dtype = _DTYPES[dname][1]
        out[name] = {
            "dtype": dname,
            "shape": list(t.shape),
            "data": t.numpy().astype(np_dtype, copy=False).tobytes(),
        }
    return out


def decode_state(obj: object, max_elements: int = 50_000_000) -> ModelState:
    """Decode and strictly validate an untrusted encoded state; raise ValueError if malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"state must be a dict, got {type(obj).__name__}")
    total = 0
    state: ModelState = {}
    for name in obj:
        if not isinstance(name, str):
            raise ValueError(f"tensor name must be str, got {type(name).__name__}")
    for name in sorted(obj):
        entry = obj[name]
        shown = repr(name[:40])  # untrusted: quoted, and only its start
        if not isinstance(entry, dict) or set(entry) != _ENTRY_KEYS:
            raise ValueError(f"tensor {shown}: entry must be a dict with keys dtype, shape, data")
        dname, shape, data = entry["dtype"], entry["shape"], entry["data"]
        if not isinstance(dname, str) or dname not in _DTYPES:
            raise ValueError(f"tensor {shown}: dtype is not one of {sorted(_DTYPES)}")
        # bool is an int subclass; reject it so True cannot masquerade as a dimension.
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValueError(f"tensor {shown}: shape must be a list of non-negative ints")
        if len(shape) > 64:  # torch's own limit on dimensions
            raise ValueError(f"tensor {shown}: too many dimensions ({len(shape)})")
        numel = 0 if 0 in shape else 1
        for d in shape if numel else ():
            numel *= d
            # Stop early so a hostile shape cannot make us multiply huge integers.
            if numel > max_elements:
                break
        total += numel
        if total > max_elements:
            raise ValueError(f"state exceeds max_elements={max_elements}")
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"tensor {shown}: data must be bytes")
        torch_dtype, np_dtype = _DTYPES[dname]
        if len(data) != numel * np_dtype.itemsize:
            raise ValueError(
                f"tensor {shown}: data has {len(data)} bytes, expected {numel * np_dtype.itemsize}"
            )
        # astype(copy=True) gives a writable, owned buffer in native byte order.
        arr = np.frombuffer(data, dtype=np_dtype).astype(np_dtype.newbyteorder("="), copy=True)
        state[name] = torch.from_numpy(arr.reshape(shape)).to(torch_dtype)
    return state


def state_bytes(state: ModelState) -> bytes:
    """Canonical CBOR bytes of a state (identical states give identical bytes)."""
    return cbor2.dumps(encode_state(state), canonical=True)


def state_from_bytes(b: bytes) -> ModelState:
    """Parse and validate CBOR bytes produced by state_bytes; raise ValueError if malformed.

    The bytes come from the network (fetched blobs, synced checkpoints): canonical profile
    CBOR only (gossip.cbor_profile), so one model has one encoding and one hash."""
    try:
        obj = decode_canonical(b)
    except CborProfileError as e:
        raise ValueError(f"invalid CBOR state: {e}") from None
    return decode_state(obj)


def state_hash(state: ModelState) -> bytes:
    """SHA-256 digest of the canonical bytes of a state."""
    return hashlib.sha256(state_bytes(state)).digest()


def _check_same_layout(a: ModelState, b: ModelState) -> None:
    if set(a) != set(b):
        raise ValueError(f"state keys differ: {sorted(set(a) ^ set(b))}")
    for k in a:
        if a[k].shape != b[k].shape:
            raise ValueError(f"tensor {k!r}: shape {tuple(a[k].shape)} != {tuple(b[k].shape)}")


def state_sub(a: ModelState, b: ModelState) -> ModelState:
    """Per-key difference a - b; keys and shapes must match."""
    _check_same_layout(a, b)
    return {k: a[k] - b[k] for k in sorted(a)}


def state_add(a: ModelState, b: ModelState) -> ModelState:
    """Per-key sum a + b; keys and shapes must match."""
    _check_same_layout(a, b)
    return {k: a[k] + b[k] for k in sorted(a)}
