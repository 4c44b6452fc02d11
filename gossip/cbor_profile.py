"""The CBOR profile: the one strict decoder every byte string from the network goes through.

Pure (no trio, libp2p or torch). cbor2 is a general decoder: it resolves semantic tags itself
(shared values 28/29 build cycles and exponentially shared trees, tag 36 builds a MIME message,
others datetimes, decimals, regexes, sets...) and accepts any of the many encodings of a value,
so an envelope signed over a re-encoding could arrive padded (a duplicate map key) with its
signature still valid. Here only what the protocol itself emits is accepted, and only in
cbor2's canonical form (`cbor2.dumps(obj, canonical=True)`, what we hash and sign), so the
bytes that arrived are the bytes that were signed:

* unsigned and negative integers the CBOR head holds (-2**64 .. 2**64-1; no bignum tags);
* byte strings; text strings (strict UTF-8); definite-length arrays; definite-length maps
  whose keys are text strings (every map the protocol sends has text keys);
* false, true, null;
* finite floats (score distances and DP parameters are floats; no NaN or infinity);
* nothing else: no tags, no indefinite lengths, no undefined or other simple values.

Canonical means: every integer, length and float in its shortest form (a float in the
narrowest of half, single or double that holds it exactly), map keys in strictly increasing
order of (encoded length, encoded bytes) - which also refuses duplicates - and no trailing
bytes. Work is bounded before anything is allocated: nesting depth, total item count, and
every declared length checked against the bytes that remain.

Errors are `CborProfileError(code, detail)`; the detail names types, offsets and sizes, never
a value the sender chose.
"""

from __future__ import annotations

import math
import struct
from typing import Any

#: Container nesting allowed by default; the deepest honest message (a new-view carrying view
#: changes with prepared certificates) nests 10 deep inside its envelope.
DEFAULT_MAX_DEPTH = 16
#: Data items (every scalar, container and map key counts one) allowed by default. A 1 MiB
#: envelope of honest traffic holds a few thousand; this keeps a hostile one of 1 MiB (up to a
#: million one-byte items) to a bounded, small cost.
DEFAULT_MAX_ITEMS = 100_000

_HALF = struct.Struct(">e")
_SINGLE = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")


class CborProfileError(ValueError):
    """Bytes outside the CBOR profile: `code` names the class, the text the detail."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def decode_canonical(data: bytes, *, max_depth: int = DEFAULT_MAX_DEPTH,
                     max_items: int = DEFAULT_MAX_ITEMS) -> Any:
    """The value `data` encodes, if it is one canonical CBOR item of the profile; else
    CborProfileError. The value is built of int, bytes, str, list, dict, bool, None, float."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CborProfileError("not-bytes", f"expected bytes, got {type(data).__name__}")
    buf = bytes(data)
    end = len(buf)
    if end == 0:
        raise CborProfileError("truncated", "no data")
    budget = max_items

    def truncated(pos: int, need: int) -> CborProfileError:
        return CborProfileError("truncated", f"{need} bytes needed at offset {pos}, "
                                             f"{end - pos} left")

    def argument(ib: int, pos: int) -> tuple[int, int]:
        """The head's argument (after the initial byte at pos - 1), shortest form enforced."""
        ai = ib & 31
        if ai < 24:
            return ai, pos
        if ai == 24:
            if pos >= end:
                raise truncated(pos, 1)
            arg = buf[pos]
            if arg < 24:
                raise CborProfileError("non-canonical", f"1-byte argument {arg} at offset "
                                                        f"{pos - 1} fits the initial byte")
            return arg, pos + 1
        if ai == 25 or ai == 26 or ai == 27:
            width = 1 << (ai - 24)  # 2, 4, 8
            if pos + width > end:
                raise truncated(pos, width)
            arg = int.from_bytes(buf[pos:pos + width], "big")
            if arg < 1 << (4 * width):  # 256, 65536, 2**32
                raise CborProfileError("non-canonical", f"{width}-byte argument at offset "
                                                        f"{pos - 1} fits a shorter form")
            return arg, pos + width
        if ai == 31:
            raise CborProfileError("indefinite-length", f"indefinite length at offset {pos - 1}")
        raise CborProfileError("reserved", f"reserved additional information at offset {pos - 1}")

    def item(pos: int, depth: int) -> tuple[Any, int]:
        nonlocal budget
        budget -= 1
        if budget < 0:
            raise CborProfileError("too-many-items", f"more than {max_items} data items")
        if pos >= end:
            raise truncated(pos, 1)
        ib = buf[pos]
        major = ib >> 5
        pos += 1
        if major == 7:
            return simple(ib, pos)
        arg, pos = argument(ib, pos)
        if major == 0:
            return arg, pos
        if major == 1:
            return -1 - arg, pos
        if major == 2 or major == 3:
            if arg > end - pos:
                raise truncated(pos, arg)
            raw = buf[pos:pos + arg]
            if major == 2:
                return raw, pos + arg
            try:
                return raw.decode("utf-8"), pos + arg
            except UnicodeDecodeError:
                raise CborProfileError("invalid-utf8", f"text string of {arg} bytes at offset "
                                                       f"{pos} is not UTF-8") from None
        if major == 6:
            raise CborProfileError("tag", f"tag at offset {pos - 1}: the profile has no tags")
        if depth >= max_depth:
            raise CborProfileError("too-deep", f"containers nested more than {max_depth} deep")
        if major == 4:
            # Every element takes at least one byte and one unit of budget: a declared length
            # beyond either is refused before the list grows.
            if arg > end - pos:
                raise CborProfileError("too-long", f"array of {arg} items at offset {pos} "
                                                   f"cannot fit the {end - pos} bytes left")
            if arg > budget:
                raise CborProfileError("too-many-items", f"array of {arg} items at offset "
                                                         f"{pos}: over {max_items} items")
            out = []
            for _ in range(arg):
                value, pos = item(pos, depth + 1)
                out.append(value)
            return out, pos
        # major 5: a map; each pair takes at least two bytes and two units of budget
        if 2 * arg > end - pos:
            raise CborProfileError("too-long", f"map of {arg} pairs at offset {pos} "
                                               f"cannot fit the {end - pos} bytes left")
        if 2 * arg > budget:
            raise CborProfileError("too-many-items", f"map of {arg} pairs at offset {pos}: "
                                                     f"over {max_items} items")
        result: dict[str, Any] = {}
        prev_len, prev = -1, b""
        for _ in range(arg):
            start = pos
            if pos < end and buf[pos] >> 5 != 3:
                raise CborProfileError("bad-key", f"map key at offset {pos} is not a text "
                                                  f"string (major type {buf[pos] >> 5})")
            key, pos = item(pos, depth + 1)
            encoded = buf[start:pos]
            # cbor2's canonical order: shorter encodings first, then bytewise; equal is a
            # duplicate key (canonical text has one encoding), the padding attack.
            if len(encoded) < prev_len or (len(encoded) == prev_len and encoded <= prev):
                code = "duplicate-key" if encoded == prev else "unsorted-keys"
                raise CborProfileError(code, f"map key at offset {start} out of canonical order")
            prev_len, prev = len(encoded), encoded
            result[key], pos = item(pos, depth + 1)
        return result, pos

    def simple(ib: int, pos: int) -> tuple[Any, int]:
        ai = ib & 31
        if ai == 20:
            return False, pos
        if ai == 21:
            return True, pos
        if ai == 22:
            return None, pos
        if ai == 25 or ai == 26 or ai == 27:
            width = 1 << (ai - 24)
            if pos + width > end:
                raise truncated(pos, width)
            raw = buf[pos:pos + width]
            value = (_HALF if width == 2 else _SINGLE if width == 4 else _DOUBLE).unpack(raw)[0]
            if not math.isfinite(value):
                raise CborProfileError("non-finite-float", f"NaN or infinity at offset {pos - 1}")
            if width > 2 and (_fits(_HALF, value) or (width == 8 and _fits(_SINGLE, value))):
                raise CborProfileError("non-canonical", f"{width}-byte float at offset {pos - 1} "
                                                        f"fits a shorter form")
            return value, pos + width
        if ai == 31:
            raise CborProfileError("indefinite-length", f"break code at offset {pos - 1}")
        raise CborProfileError("simple-value", f"simple value {ai} at offset {pos - 1} "
                                               f"(only false, true, null and floats)")

    value, pos = item(0, 0)
    if pos != end:
        raise CborProfileError("trailing-bytes", f"{end - pos} bytes after the item")
    return value


def _fits(fmt: struct.Struct, value: float) -> bool:
    """True if `value` survives a round trip through the narrower float format unchanged."""
    try:
        return fmt.unpack(fmt.pack(value))[0] == value
    except OverflowError:
        return False


class CborEncodeError(ValueError):
    """A value the profile cannot carry (so our encoder refuses to send it)."""


def check_encodable(obj: Any, *, floats: bool = True, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise CborEncodeError unless `obj` is inside the profile: int in -2**64..2**64-1, bytes,
    str, list/tuple, dict with str keys, bool, None, and (if `floats`) finite floats."""

    def walk(v: Any, depth: int) -> None:
        if v is None or isinstance(v, (bool, bytes, str)):
            return
        if isinstance(v, int):
            if not -2**64 <= v < 2**64:
                raise CborEncodeError("integer outside the CBOR head's range (no bignums)")
            return
        if isinstance(v, float):
            if not floats:
                raise CborEncodeError("a float where the protocol specifies none")
            if not math.isfinite(v):
                raise CborEncodeError("NaN or infinity")
            return
        if depth >= max_depth:
            raise CborEncodeError(f"containers nested more than {max_depth} deep")
        if isinstance(v, (list, tuple)):
            for x in v:
                walk(x, depth + 1)
            return
        if isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, str):
                    raise CborEncodeError(f"map key of type {type(k).__name__} (text only)")
                walk(x, depth + 1)
            return
        raise CborEncodeError(f"type {type(v).__name__} is outside the profile")

    walk(obj, 0)


def encode_canonical(obj: Any, *, floats: bool = True) -> bytes:
    """The canonical profile CBOR of `obj`; CborEncodeError if it is outside the profile."""
    import cbor2  # the encoder (deterministic with canonical=True); decoding is ours above

    check_encodable(obj, floats=floats)
    return cbor2.dumps(obj, canonical=True)
