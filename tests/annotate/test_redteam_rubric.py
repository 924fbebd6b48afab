"""Red-team: a judge's answer is untrusted text; what the parser keeps must be writable."""

from __future__ import annotations

import pyarrow as pa

from phi_ray.annotate.rubric import parse_answer


def test_a_rationale_with_an_escaped_lone_surrogate_is_still_writable_to_parquet():
    # The judge may write the JSON escape "\ud800" in its answer: json.loads makes it a lone
    # surrogate, which Arrow refuses, crashing the annotate stage's labels write.
    got = parse_answer('{"score": 4, "rationale": "fine \\ud800 code"}')
    assert got["score"] == 4 and got["rationale"] == "fine \ufffd code"
    pa.table({"rationale": [got["rationale"]]})


def _timed(fn, *args):
    """Seconds ``fn(*args)`` took, whether it returned or raised."""
    import contextlib
    import time

    t0 = time.perf_counter()
    with contextlib.suppress(Exception):
        fn(*args)
    return time.perf_counter() - t0


def test_a_long_identifier_ending_in_a_non_ascii_letter_is_judged_in_linear_time():
    # `^_*[a-zA-Z]{3,}(_?[a-zA-Z0-9]+)*_*$` backtracks exponentially on "aaa...aé" (a valid
    # Python name): 24 letters took 0.2 s, 40 would take hours, stalling annotate.
    from phi_ray.annotate.heuristic import judge

    code = "def " + "a" * 60 + "\u00e9(x):\n    '''Return x.'''\n    return x\n"
    assert _timed(judge, code) < 2.0


def test_a_judge_answer_of_unclosed_braces_is_parsed_in_linear_time():
    # r"\{.*\}" (DOTALL) is quadratic on "{{{{...": a 1 MB answer (a server that ignores
    # max_tokens) took minutes per answer in annotate and in evaluate's grading.
    from phi_ray.evaluate.grading import parse_grade

    for parse in (parse_answer, parse_grade):
        assert _timed(parse, "{" * 400_000) < 2.0
    assert parse_answer('x {"score": 2, "rationale": "{ok}"} y') == {
        "score": 2,
        "rationale": "{ok}",
    }
    assert parse_grade('Grade: {"score": 7, "rationale": "r"}.')["score"] == 7
