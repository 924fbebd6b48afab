"""The plain-data codec between judge and candidate: round trips, and what it refuses."""

from __future__ import annotations

import math
import os

import pytest

from phi_ray.sandbox import wire


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(10**30),
        1.5,
        -0.0,
        "é\n",
        b"\x00\xff",
        1 + 2j,
        [1, (2, "3")],
        {1: [2], "a": {3, 4}},
        frozenset({1}),
        range(1, 9, 2),
        (),
        {},
    ],
)
def test_round_trip_keeps_types(value):
    back = wire.decode(wire.encode(value))
    assert back == value and type(back) is type(value)


def test_special_floats_and_iterators():
    assert math.isnan(wire.decode(wire.encode(float("nan"))))
    assert list(wire.decode(wire.encode(map(str, [1, 2])))) == ["1", "2"]


def test_lying_objects_become_plain_or_are_refused():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    class LyingInt(int):
        def __eq__(self, other):
            return True

    with pytest.raises(TypeError):
        wire.encode(AlwaysEqual())
    back = wire.decode(wire.encode(LyingInt(3)))
    assert type(back) is int and back != 4


@pytest.mark.parametrize(
    "bad",
    [
        {"$": "x", "v": 1},
        {"$": "t"},
        {"$": "d", "v": [[[1], 2]]},
        {"$": "s", "v": [[1]]},
        {"a": 1},
        {"$": "c", "v": ["x", 1]},
    ],
)
def test_malformed_values_are_wire_errors(bad):
    with pytest.raises(wire.WireError):
        wire.decode(bad)


def test_frames_are_bounded():
    r, w = os.pipe()
    try:
        wire.send(w, {"x": "y" * 1000})
        with pytest.raises(wire.WireError, match="exceeds"):
            wire.recv(r, 100)
    finally:
        os.close(r)
        os.close(w)
    assert isinstance(wire.decode_exception({"name": "SystemExit", "msg": "0"}), RuntimeError)
    assert isinstance(wire.decode_exception({"name": "ValueError", "msg": "x"}), ValueError)
