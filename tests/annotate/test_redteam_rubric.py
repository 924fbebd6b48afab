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
