"""Framed messages and a plain-data codec, shared by the host, the server, the judge and
the candidate harness (standard library only: it is imported by ``python -I -S``).

A frame is a 4-byte big-endian length and that many bytes of UTF-8 JSON. Every reader
passes the largest frame it accepts, so a hostile writer can make a reader fail, never
make it buffer without bound.

Values cross between the judge and the candidate as *plain data*: None, bool, int,
float, str, bytes, complex, list, tuple, set, frozenset, dict, range, and iterators
(materialised, bounded). Whatever object the candidate returns, the judge receives a
fresh builtin value decoded here, so an object with a lying ``__eq__`` cannot reach the
judge's assertions.
"""

from __future__ import annotations

import builtins
import json
import os
import struct

MAX_ITEMS = 1_000_000  # an iterator longer than this is an error, not an endless loop
_STOPS = (StopIteration, StopAsyncIteration)  # never re-raised as themselves in the judge
_LEN = struct.Struct(">I")


class WireError(Exception):
    """A frame or a value that breaks the protocol (too large, malformed, closed)."""


def send(fd: int, obj: object) -> None:
    """Write one frame."""
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8", "surrogatepass")
    buf = memoryview(_LEN.pack(len(data)) + data)
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def _read_exact(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise WireError("connection closed")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def recv(fd: int, max_bytes: int) -> object:
    """Read one frame of at most ``max_bytes``; WireError on EOF, overflow or bad JSON."""
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size))
    if n > max_bytes:
        raise WireError(f"frame of {n} bytes exceeds the limit of {max_bytes}")
    try:
        return json.loads(_read_exact(fd, n).decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError) as e:
        raise WireError(f"malformed frame: {type(e).__name__}") from None


# --------------------------------------------------------------------------- values


def encode(x: object, depth: int = 0) -> object:
    """A JSON-able form of a plain value; TypeError for anything else."""
    if depth > 200:
        raise TypeError("value nested too deeply")
    if x is None or x is True or x is False:
        return x
    d = depth + 1
    if isinstance(x, bool):
        return bool(x)
    if isinstance(x, int):
        return {"$": "n", "v": str(int(x))} if abs(x) >= 1 << 53 else int(x)
    if isinstance(x, float):
        return float(x)
    if isinstance(x, str):
        return str(x)
    if isinstance(x, list):
        return [encode(v, d) for v in list(x)]
    if isinstance(x, tuple):
        return {"$": "t", "v": [encode(v, d) for v in tuple(x)]}
    if isinstance(x, dict):
        return {"$": "d", "v": [[encode(k, d), encode(v, d)] for k, v in dict(x).items()]}
    if isinstance(x, frozenset):
        return {"$": "f", "v": [encode(v, d) for v in frozenset(x)]}
    if isinstance(x, set):
        return {"$": "s", "v": [encode(v, d) for v in set(x)]}
    if isinstance(x, bytes | bytearray):
        return {"$": "b", "v": bytes(x).decode("latin-1")}
    if isinstance(x, complex):
        return {"$": "c", "v": [x.real, x.imag]}
    if isinstance(x, range):
        return {"$": "r", "v": [x.start, x.stop, x.step]}
    if hasattr(x, "__next__"):  # generators, map, filter, zip: materialised
        items = []
        for v in x:
            if len(items) >= MAX_ITEMS:
                raise TypeError(f"iterator longer than {MAX_ITEMS} items")
            items.append(encode(v, d))
        return {"$": "i", "v": items}
    raise TypeError(f"cannot pass a {type(x).__name__} between processes (plain data only)")


def decode(x: object, depth: int = 0) -> object:
    """The value :func:`encode` described; WireError for anything malformed."""
    if depth > 200:
        raise WireError("value nested too deeply")
    if x is None or isinstance(x, bool | int | float | str):
        return x
    d = depth + 1
    if isinstance(x, list):
        return [decode(v, d) for v in x]
    if not isinstance(x, dict) or set(x) != {"$", "v"}:
        raise WireError("malformed value")
    tag, v = x["$"], x["v"]
    try:
        if tag == "n":
            return int(v)
        if tag == "b":
            return v.encode("latin-1")
        if tag == "c":
            return complex(float(v[0]), float(v[1]))
        if tag == "r":
            return range(int(v[0]), int(v[1]), int(v[2]))
        items = [decode(i, d) for i in v]
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "f":
            return frozenset(items)
        if tag == "i":
            return iter(items)
        if tag == "d":
            return {k: val for k, val in items}
    except WireError:
        raise
    except (TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        raise WireError(f"malformed value: {type(e).__name__}: {e}") from None
    raise WireError(f"unknown value tag {tag!r}")


def encode_exception(e: BaseException) -> dict:
    """An exception as data: its class name and message (both bounded)."""
    try:
        msg = str(e)
    except BaseException:
        msg = ""
    return {"name": type(e).__name__[:100], "msg": msg[:2000]}


def decode_exception(obj: object) -> Exception:
    """A builtin exception of the same name (RuntimeError if not a builtin Exception)."""
    if not isinstance(obj, dict):
        return RuntimeError("malformed exception from the candidate")
    name, msg = str(obj.get("name", ""))[:100], str(obj.get("msg", ""))[:2000]
    cls = getattr(builtins, name, None)
    # StopIteration re-raised inside a test's map() or filter() would end that iteration
    # early (all() of nothing is True: a pass); as PEP 479 does in generators, it is a
    # RuntimeError here.
    if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, _STOPS):
        try:
            return cls(msg)
        except Exception:
            pass
    return RuntimeError(f"{name}: {msg}")
