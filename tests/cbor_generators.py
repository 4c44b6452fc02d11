"""Structure-aware CBOR for fuzzing the decoders: hostile items built byte by byte, and values.

Mutating valid bytes rarely produces a well-formed tag, an indefinite-length item or a shared
reference, so the attacks that matter (cyclic shared values, MIME and other rich tags,
exponential sharing, duplicate-key padding, non-canonical numbers) never came up in the
mutation fuzzer. These generators write them on purpose, with a seeded `random.Random`:

* `hostile_item(rng)`: the bytes of one well-formed (or nearly so) CBOR item of any major type,
  any tag class (shared values 28/29 with cycles, MIME 36, datetimes 0/1, bignums 2/3, decimal
  4, regex 35, set 258, self-describe 55799, tag numbers of every width), indefinite lengths,
  simple values, floats of every width (NaN, infinity, non-shortest), non-canonical integers,
  duplicate and unsorted keys, deep nesting and huge declared lengths;
* `profile_value(rng)`: a Python value inside the profile (so it can be signed: the envelope
  signs the canonical re-encoding) but of a hostile shape: wrong types, huge integers, long
  strings, empty and oversized containers;
* `encode_with_raw` and `replace_at`: a real message with one field replaced, either by a
  profile value (re-encodable, re-signable) or by raw hostile bytes spliced into the encoding.
"""

from __future__ import annotations

import math
import random
import struct
from typing import Any

import cbor2

#: Tag numbers worth trying: every class cbor2 (or any general decoder) gives meaning to, and
#: numbers of every head width.
TAGS = (0, 1, 2, 3, 4, 5, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 32, 33, 34, 35, 36, 37, 38,
        256, 258, 259, 260, 261, 1001, 55799, 0xFFFF, 0x10000, 0xFFFFFFFF, 2**32, 2**64 - 1)

KEYS = ("k", "n", "p", "r", "s", "sig", "h", "o", "z", "t", "view", "value_hash", "value",
        "scores", "block", "certificate", "commits", "model", "samples", "base", "blob", "dp",
        "delta", "scale", "index", "dtype", "shape", "data", "err", "start", "count", "hash", "height", "blocks")


class Raw(bytes):
    """Bytes to splice into an encoding as they are (one CBOR item, maybe a hostile one)."""


def head(major: int, arg: int, width: int | None = None) -> bytes:
    """A CBOR head; `width` None is the shortest form, else 0 (inline) or 1, 2, 4, 8 bytes
    (a non-canonical head when longer than needed)."""
    if width is None:
        width = 0 if arg < 24 else 1 if arg < 256 else 2 if arg < 2**16 else \
            4 if arg < 2**32 else 8
    if width == 0:
        return bytes([major << 5 | arg])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | ai]) + arg.to_bytes(width, "big")


def _wide(rng: random.Random, arg: int) -> int | None:
    """A head width for `arg`: mostly the shortest, sometimes a longer (non-canonical) one."""
    if rng.random() < 0.8:
        return None
    fits = [w for w in (0, 1, 2, 4, 8) if (w == 0 and arg < 24) or (w and arg < 256 ** w)]
    return rng.choice(fits)


def _int_arg(rng: random.Random) -> int:
    return rng.choice((0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63,
                       2**64 - 1, rng.randrange(2**rng.choice((5, 8, 16, 32, 64)))))


def float_bytes(value: float, width: int) -> bytes:
    """`value` as a CBOR float of `width` bytes (2, 4, 8), rounded if it must be."""
    fmt = {2: ">e", 4: ">f", 8: ">d"}[width]
    try:
        packed = struct.pack(fmt, value)
    except OverflowError:
        packed = struct.pack(fmt, math.copysign(math.inf, value))
    return bytes([0xE0 | {2: 25, 4: 26, 8: 27}[width]]) + packed


def _float(rng: random.Random) -> bytes:
    value = rng.choice((0.0, -0.0, 1.0, 0.5, 1.1, 65504.0, 1e-7, 2.0**-24, 1e300, math.nan,
                        math.inf, -math.inf, rng.uniform(-1e6, 1e6), rng.random()))
    return float_bytes(value, rng.choice((2, 4, 8)))


def _text(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.6:
        raw = rng.choice(KEYS + ("", "update", "scores", "é" * rng.randrange(5))).encode()
    elif roll < 0.8:
        raw = rng.randbytes(rng.randrange(12))  # maybe not UTF-8
    else:
        raw = b"\xed\xa0\x80" if rng.random() < 0.5 else b"\xc0\xaf"  # surrogate, overlong
    return head(3, len(raw), _wide(rng, len(raw))) + raw


def _bytes(rng: random.Random) -> bytes:
    raw = rng.randbytes(rng.choice((0, 1, 8, 32, 64, 100)))
    return head(2, len(raw), _wide(rng, len(raw))) + raw


def hostile_item(rng: random.Random, depth: int = 0) -> bytes:
    """The bytes of one CBOR item, hostile in one or more ways (see the module docstring)."""
    leaf = depth > 4 or rng.random() < 0.45
    roll = rng.randrange(100 if not leaf else 40)
    if roll < 6:
        arg = _int_arg(rng)
        return head(rng.choice((0, 1)), arg, _wide(rng, arg))
    if roll < 10:
        return _float(rng)
    if roll < 16:
        return _text(rng)
    if roll < 21:
        return _bytes(rng)
    if roll < 25:  # simple values: false, true, null, undefined, others, reserved, break
        return rng.choice((b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xe0", b"\xf3",
                           b"\xf8" + bytes([rng.randrange(256)]), b"\xfc", b"\xfe", b"\xff"))
    if roll < 30:  # a bignum (tag 2/3), small or huge
        raw = rng.randbytes(rng.choice((1, 8, 9, 64)))
        return head(6, rng.choice((2, 3))) + head(2, len(raw)) + raw
    if roll < 35:  # declared lengths far beyond what follows
        major = rng.choice((2, 3, 4, 5))
        return head(major, rng.choice((2**16, 2**31, 2**32, 2**40, 2**63, 2**64 - 1))) + \
            bytes(rng.randrange(4))
    if roll < 40:  # truncated: an item cut short
        whole = _bytes(rng) if rng.random() < 0.5 else head(4, 3) + b"\x01"
        return whole[:rng.randrange(1, max(2, len(whole)))]
    if roll < 50:
        return _tagged(rng, depth)
    if roll < 58:  # arrays, sometimes indefinite
        n = rng.randrange(5)
        items = b"".join(hostile_item(rng, depth + 1) for _ in range(n))
        if rng.random() < 0.2:
            return b"\x9f" + items + b"\xff"
        return head(4, n, _wide(rng, n)) + items
    if roll < 70:
        return _map(rng, depth)
    if roll < 75:  # indefinite-length strings
        major = rng.choice((2, 3))
        chunks = b"".join(head(major, 1) + b"a" for _ in range(rng.randrange(3)))
        return bytes([major << 5 | 31]) + chunks + b"\xff"
    if roll < 80:  # deep nesting
        n = rng.choice((8, 16, 17, 64, 1000, 5000))
        opener = rng.choice((b"\x81", b"\xa1\x61a", b"\xd8\x1c\x81", b"\x9f"))
        return opener * n + b"\x00" + (b"\xff" * n if opener == b"\x9f" else b"")
    if roll < 85:
        return exponential_sharing(rng.randrange(1, 40))
    if roll < 90:
        return cyclic_shared()
    if roll < 95:  # self-describe in front of a valid item
        return head(6, 55799) + hostile_item(rng, depth + 1)
    return cbor2.dumps(profile_value(rng, depth), canonical=True)


def _tagged(rng: random.Random, depth: int) -> bytes:
    tag = rng.choice(TAGS)
    if tag == 36:  # MIME: cbor2 builds an email.message from the text
        content = b"Content-Type: text/plain\r\n\r\nhello"
        return head(6, 36) + head(3, len(content)) + content
    if tag in (0, 1):  # datetimes, from text or epoch numbers
        body = (head(3, 20) + b"2024-01-01T00:00:00Z") if tag == 0 else \
            rng.choice((head(0, 1_700_000_000), float_bytes(1.7e9, 8), head(1, 2**63)))
        return head(6, tag) + body
    if tag == 258:  # a set, maybe of unhashable members
        return head(6, 258) + head(4, 2) + rng.choice((b"\x01\x02", b"\x80\x80", b"\xa0\x01"))
    if tag == 4:  # decimal fraction [exponent, mantissa], huge exponents included
        return head(6, 4) + head(4, 2) + head(1, rng.choice((1, 2**32, 2**63))) + head(0, 5)
    if tag == 29:  # a reference with nothing shared, or far out of range
        return head(6, 29) + head(0, rng.choice((0, 1, 2**32)))
    return head(6, tag, _wide(rng, tag)) + hostile_item(rng, depth + 1)


def _map(rng: random.Random, depth: int) -> bytes:
    """A map: canonical, unsorted, with a duplicate key, or with non-text keys."""
    n = rng.randrange(1, 5)
    keys = rng.sample(KEYS, n)
    encoded = [cbor2.dumps(k) for k in keys]
    style = rng.randrange(4)
    if style == 0:
        encoded.sort(key=lambda e: (len(e), e))
    elif style == 1 and n > 1:
        encoded.sort(key=lambda e: (len(e), e), reverse=True)
    elif style == 2:
        encoded.append(encoded[0])  # a duplicate key: the padding attack
    else:
        encoded[0] = rng.choice((b"\x00", b"\x41k", b"\x80", b"\xa0", b"\xf5", b"\xf9\x3c\x00"))
    body = b"".join(e + hostile_item(rng, depth + 1) for e in encoded)
    if rng.random() < 0.1:
        return b"\xbf" + body + b"\xff"
    return head(5, len(encoded)) + body


def exponential_sharing(levels: int) -> bytes:
    """Each level a shared array of two references to the level below: about 5 bytes a level,
    2**levels leaves once the references are resolved (and repr'd)."""
    out = head(6, 28) + head(4, 0)  # shared value 0: []
    for i in range(levels):
        out = head(6, 28) + head(4, 2) + out + head(6, 29) + head(0, i)
    return out


def cyclic_shared() -> bytes:
    """A shared array that contains a reference to itself: a cycle once resolved."""
    return head(6, 28) + head(4, 1) + head(6, 29) + head(0, 0)


def profile_value(rng: random.Random, depth: int = 0) -> Any:
    """A value inside the profile but of a shape no honest peer sends (see module docstring)."""
    if depth > 3 or rng.random() < 0.6:
        return rng.choice((
            0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -2**64, -2**63,
            rng.randrange(-2**64, 2**64), 0.0, -0.0, 0.5, 1e300, -1e300, 5e-324, 1.0,
            rng.uniform(-10, 10), True, False, None, "", "x" * rng.choice((1, 64, 129, 5000)),
            "update", "rdp", "float32", b"", b"\x01" * 32, b"\x00" * 64,
            rng.randbytes(rng.randrange(70)),
        ))
    if rng.random() < 0.5:
        # One long list at the top at most: long lists all the way down would be slow to build.
        n = rng.choice((0, 1, 2, 3, 4, 64 if depth == 0 else 5))
        return [profile_value(rng, depth + 1) for _ in range(n)]
    return {rng.choice(KEYS): profile_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys and indices) to a node of a decoded value, the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, prefix + (i,))
    return out


def replace_at(obj: Any, path: tuple, new: Any) -> Any:
    """A copy of `obj` with the node at `path` replaced by `new` (or, for a map key path ending
    in the special `DROP`, removed)."""
    if not path:
        return new
    key, rest = path[0], path[1:]
    if isinstance(obj, dict):
        copy = dict(obj)
        if new is DROP and not rest:
            copy.pop(key, None)
        else:
            copy[key] = replace_at(obj[key], rest, new)
        return copy
    copy_list = list(obj)
    if new is DROP and not rest:
        del copy_list[key]
    else:
        copy_list[key] = replace_at(obj[key], rest, new)
    return copy_list


DROP = object()


def mutate_value(rng: random.Random, obj: Any) -> Any:
    """`obj` with one random node replaced by a profile value, dropped, or a map key added."""
    path = rng.choice(paths(obj))
    roll = rng.random()
    if roll < 0.1 and path:
        return replace_at(obj, path, DROP)
    if roll < 0.2:
        node = _at(obj, path)
        if isinstance(node, dict):
            return replace_at(obj, path, {**node, rng.choice(KEYS): profile_value(rng)})
    return replace_at(obj, path, profile_value(rng))


def splice_raw(rng: random.Random, obj: Any) -> bytes:
    """The canonical encoding of `obj` with one random node replaced by raw hostile bytes."""
    path = rng.choice(paths(obj))
    return encode_with_raw(replace_at(obj, path, Raw(hostile_item(rng))))


def _at(obj: Any, path: tuple) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def encode_with_raw(obj: Any) -> bytes:
    """cbor2's canonical encoding of `obj`, except that `Raw` nodes are written as they are."""
    if isinstance(obj, Raw):
        return bytes(obj)
    if isinstance(obj, dict):
        pairs = sorted(((cbor2.dumps(k, canonical=True), v) for k, v in obj.items()),
                       key=lambda kv: (len(kv[0]), kv[0]))
        return head(5, len(pairs)) + b"".join(k + encode_with_raw(v) for k, v in pairs)
    if isinstance(obj, (list, tuple)):
        return head(4, len(obj)) + b"".join(encode_with_raw(v) for v in obj)
    return cbor2.dumps(obj, canonical=True)
