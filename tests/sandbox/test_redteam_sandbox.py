"""Red-team verdict forgery beyond test_verdict_forgery.py."""

from __future__ import annotations

from phi_ray.sandbox import Check
from tests.sandbox.kit import PROMPT, RIGHT

# A legitimate test style: the candidate called inside map() under all().
MAP_TEST = (
    "CASES = [((2, 3), 5), ((-1, 1), 0)]\n"
    "def check(candidate):\n"
    "    assert all(map(lambda c: candidate(*c[0]) == c[1], CASES))\n"
    "    assert sum(1 for _ in filter(lambda c: candidate(*c[0]) != c[1], CASES)) == 0\n"
)


def test_a_candidate_raising_stopiteration_cannot_end_the_tests_iteration(sandbox):
    # StopIteration raised by the candidate's function, re-raised in the judge inside the
    # test's map() would end the iteration early: all() of nothing is True, a pass.
    forged = "    raise StopIteration\n"
    forged_async = "    raise StopAsyncIteration\n"
    res = sandbox.run([Check(PROMPT, c, MAP_TEST, "add") for c in (forged, forged_async, RIGHT)])
    assert [r.passed for r in res] == [False, False, True], res
    assert "StopIteration" in res[0].result, res[0]
