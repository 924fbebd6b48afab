"""Benchmarks: HumanEval from the package, MBPP in the paper's prompt format, user JSONL."""

from __future__ import annotations

import json

import pytest

from phi_ray.config import load_config
from phi_ray.evaluate.problems import (
    ProblemError,
    benchmark_name,
    load_benchmark,
    load_humaneval,
    load_mbpp,
)
from phi_ray.evaluate.sandbox import Limits, Sandbox

MBPP_ROWS = [
    {
        "task_id": 11,
        "text": "Write a python function to remove first and last occurrence of a given character from the string.",
        "code": "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    for i in range(len(s) - 1,-1,-1):  \r\n        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
        "test_list": [
            'assert remove_Occ("hello","l") == "heo"',
            'assert remove_Occ("abcda","a") == "bcd"',
            'assert remove_Occ("PHP","P") == "H"',
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 17,
        "text": "Write a function to find the perimeter of a square.",
        "code": "import math\ndef _helper(a):\n  return a\ndef square_perimeter(a):\r\n  perimeter=4*_helper(a)\r\n  return perimeter",
        "test_list": [
            "assert square_perimeter(10)==40",
            "assert square_perimeter(5)==20",
        ],
        "test_setup_code": "",
        "challenge_test_list": [],
    },
    {
        "task_id": 601,
        "text": "outside the test split",
        "code": "def f(x): return x",
        "test_list": ["assert f(1) == 1"],
    },
]


@pytest.fixture
def mbpp_file(tmp_path):
    p = tmp_path / "mbpp.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in MBPP_ROWS))
    return p


def test_humaneval_loads_164():
    probs = load_humaneval()
    assert len(probs) == 164 and probs[0].task_id == "HumanEval/0"
    assert probs[0].entry_point in probs[0].prompt and probs[0].canonical_solution


def test_mbpp_prompt_format_and_execution(mbpp_file):
    probs = load_mbpp(str(mbpp_file))
    assert [p.task_id for p in probs] == ["mbpp/11", "mbpp/17"]  # 601 is not in the test split
    assert len(load_mbpp(str(mbpp_file), split="all")) == 3
    p = probs[0]
    assert p.prompt.startswith('def remove_Occ(s, ch):\n    """\n')
    assert "remove first and last occurrence" in p.prompt
    assert 'assert remove_Occ("hello","l") == "heo"' in p.prompt  # exactly one test shown
    assert "abcda" not in p.prompt and "abcda" in p.test
    assert probs[1].prompt.startswith("import math\n\n\ndef square_perimeter(a):")
    body = "    res = s.replace(ch, '', 1)\n    i = res.rfind(ch)\n    return res if i < 0 else res[:i] + res[i + 1:]\n"
    wrong = "    return s\n"
    with Sandbox(Limits(timeout_s=5.0), parallel=2) as sb:
        res = sb.run(
            [
                p.program(p.canonical_solution),
                probs[1].program(probs[1].canonical_solution),
                p.program(body),
                p.program(wrong),
            ]
        )
    assert [r.passed for r in res] == [True, True, True, False]


def test_mbpp_hub_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ProblemError, match=r"evaluate\.mbpp_path"):
        load_mbpp(None)


def test_extra_problems_and_bad_files(tmp_path):
    good = tmp_path / "unconventional.jsonl"
    row = {
        "task_id": "U/0",
        "prompt": "def f(x):\n",
        "test": "def check(c):\n    assert c(2) == 4\n",
        "entry_point": "f",
    }
    good.write_text(json.dumps(row) + "\n")
    cfg = load_config("tiny")
    probs = load_benchmark(str(good), cfg.evaluate)
    assert benchmark_name(str(good)) == "unconventional"
    assert probs[0].program("    return x * 2\n").endswith("check(f)")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x", "prompt": "p"}\nnot json\n')
    with pytest.raises(ProblemError, match=r"bad.jsonl, line 2"):
        load_benchmark(str(bad), cfg.evaluate)
    bad.write_text('{"task_id": "x", "prompt": "p"}\n')
    with pytest.raises(ProblemError, match=r"missing key\(s\) \['test', 'entry_point'\]"):
        load_benchmark(str(bad), cfg.evaluate)
    with pytest.raises(ProblemError, match="no such file"):
        load_benchmark(str(tmp_path / "nope.jsonl"), cfg.evaluate)
