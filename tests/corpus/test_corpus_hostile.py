"""Hostile input for the ingest readers: each class is a counted drop reason, in bounded
time, never a hang, a crash or a file from outside the source tree.

The reader functions are driven directly here (no Ray) where they can be; the Ray paths
(task-side listing, Parquet read per file, the hub through an fsspec filesystem) run on
the session's Ray; the whole ingest stage sees the same inputs in test_corpus_stage.py.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import sys
import sysconfig
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi_ray.config import FilterConfig, SourceConfig
from phi_ray.corpus import filters, listing, stack, stackoverflow
from phi_ray.corpus.html_text import html_to_text
from phi_ray.corpus.readers import CorpusError, _list, read_one, read_source
from phi_ray.synth import parse

STDLIB = Path(sysconfig.get_paths()["stdlib"])
GOOD = (STDLIB / "textwrap.py").read_text()
SECRET = 'AWS_SECRET_ACCESS_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"\n' * 3


def _bounded(fn, seconds: float = 30.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not return."""
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("v", fn()), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} still running after {seconds} s (blocked)"
    return out["v"]


@pytest.fixture
def tree(tmp_path):
    """A source tree with every kind of non-file named *.py, and a secret outside it."""
    root, outside = tmp_path / "code", tmp_path / "home"
    (root / "pkg").mkdir(parents=True)
    outside.mkdir()
    (outside / "credentials.py").write_text(SECRET)  # parses, passes every filter
    (root / "good.py").write_text(GOOD)
    (root / "pkg" / "inner.py").write_text("x = 1\n" * 40)
    os.mkfifo(root / "fifo.py")
    os.mkfifo(outside / "fifo_out.py")
    (root / "creds.py").symlink_to(outside / "credentials.py")
    (root / "pkg" / "up.py").symlink_to("../../home/credentials.py")  # relative escape
    (root / "inner_link.py").symlink_to(root / "pkg" / "inner.py")  # stays inside: fine
    (root / "fifo_link.py").symlink_to(root / "fifo.py")
    (root / "zero.py").symlink_to("/dev/zero")
    (root / "dir.py").mkdir()  # a directory named like a file is descended, not read
    (root / "escape_dir").symlink_to(outside, target_is_directory=True)  # never walked
    (root / os.fsdecode(b"caf\xe9.py")).write_text("y = 2\n" * 30)  # a name that is not UTF-8
    return root


def test_non_files_and_escaping_links_are_drop_reasons_not_hangs(tree):
    real = listing.tree_root(str(tree))

    def reason(name):
        return _bounded(lambda: read_one(str(tree / name), -1, 1_000_000, real))[1]

    assert reason("good.py") is None and reason("inner_link.py") is None
    assert reason("fifo.py") == "not_regular"  # open() would block forever
    assert reason("fifo_link.py") == "not_regular"
    assert reason("creds.py") == "outside_tree"
    assert reason("pkg/up.py") == "outside_tree"
    assert reason("zero.py") == "outside_tree"
    assert reason("dir.py") == "not_regular"
    # A socket: bound in a short temp dir (AF_UNIX paths are limited to ~108 bytes).
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(f"{short}/s.py")
            got = _bounded(lambda: read_one(f"{short}/s.py", -1, 1000, short))
            assert got == (None, "not_regular")
        finally:
            s.close()


def test_task_listing_names_every_entry_once_and_never_leaves_the_tree(tree):
    shards = listing.plan_shards(str(tree), (".py",), False, files_per_shard=2)
    listed = [p for s in shards for p in listing.walk_shard(s, (".py",), False)]
    rel = sorted(os.path.relpath(p, tree) for p in listed)
    assert rel == sorted(
        [
            "good.py",
            "fifo.py",
            "creds.py",
            "inner_link.py",
            "fifo_link.py",
            "zero.py",
            "pkg/inner.py",
            "pkg/up.py",
            os.fsdecode(b"caf\xe9.py"),
        ]
    )  # escape_dir (a link to a directory) is not walked; dir.py is a directory
    assert not any("home" in p for p in listed)
    # A tree deeper than the recursion limit: 3.11's os.walk recurses once per level
    # (2,000 levels of one-letter names fit in PATH_MAX); the task's walk is iterative.
    # The limit is lowered rather than the tree made 2,000 deep, so that pytest's own
    # (recursive) cleanup of tmp_path still works.
    top = tree.parent / "deep"
    top.mkdir()
    deep = str(top)
    for _ in range(300):
        deep += "/d"
        os.mkdir(deep)
    Path(deep, "x.py").write_text("x = 1\n")
    frames, f = 0, sys._getframe()
    while f is not None:
        frames, f = frames + 1, f.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frames + 150)
    try:
        with pytest.raises(RecursionError):
            list(os.walk(top))
        got = listing.walk_shard({"dir": str(top), "names": None}, (".py",), False)
    finally:
        sys.setrecursionlimit(limit)
    assert got == [f"{deep}/x.py"]
    # The driver-side listing (Parquet / JSONL sources) leaves non-files out entirely.
    got = _bounded(lambda: _list(SourceConfig(kind="local_dir", path=str(tree)), "w", (".py",)))
    assert sorted(os.path.relpath(p, tree) for p, _ in got) == [
        "good.py",
        "inner_link.py",
        "pkg/inner.py",
    ]


def test_shards_concatenate_to_the_sorted_tree_and_sample_like_a_global_stride():
    files = _list(SourceConfig(kind="stdlib"), "w", (".py",))
    everything = [p for p, _ in files]
    shards = listing.plan_shards(str(STDLIB), (".py",), True, files_per_shard=128)
    assert len(shards) >= 16  # the driver saw the top levels only, yet the work spreads
    # A folder with more entries than the driver may hold is left whole to one task.
    assert listing.plan_shards(str(STDLIB), (".py",), True, max_entries=50) == [
        {"dir": str(STDLIB), "names": None}
    ]
    parts = [listing.walk_shard(s, (".py",), True) for s in shards]
    flat = [p for part in parts for p in part]
    # Every listed file once, in the global sorted order (non-files are listed too: the
    # reader gives them their drop reason).
    regular = set(everything)
    assert [p for p in flat if p in regular] == everything
    assert flat == sorted(flat)
    for k in (1, 7, 50, 600, len(flat) - 1):
        step, off, picked = len(flat) / k, 0, []
        for part in parts:
            picked += [part[i] for i in listing.stride_picks(off, len(part), step)]
            off += len(part)
        assert picked == [flat[int(i * step)] for i in range(k)], k


def test_local_dir_is_listed_and_read_in_ray_tasks(ray_session, tree, tmp_path):
    ds = read_source(SourceConfig(kind="local_dir", path=str(tree)), 1_000_000)
    rows = {r["path"]: r["drop"] for r in _bounded(ds.take_all, 300)}
    assert rows == {
        "good.py": "",
        "inner_link.py": "",
        "pkg/inner.py": "",
        "fifo.py": "not_regular",
        "fifo_link.py": "not_regular",
        "creds.py": "outside_tree",
        "pkg/up.py": "outside_tree",
        "zero.py": "outside_tree",
        "caf\ufffd.py": "",  # read and counted; shown with U+FFFD for the bad byte
    }
    sampled = read_source(SourceConfig(kind="local_dir", path=str(tree), max_files=3), 10**6)
    # 3 of the 9 listed entries (caf\udce9, creds, fifo, fifo_link, good, inner_link,
    # pkg/inner, pkg/up, zero), at the global stride 9/3: indices 0, 3, 6
    assert sorted(r["path"] for r in sampled.take_all()) == [
        "caf\ufffd.py",
        "fifo_link.py",
        "pkg/inner.py",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"no \.py files under"):
        read_source(SourceConfig(kind="local_dir", path=str(tmp_path / "empty")), 1000)


# --------------------------------------------------------------------------- StackOverflow

GOOD_REC = {"question_id": 1, "title": "Reverse a list", "body": "How?", "answers": ["xs[::-1]"]}
WRONG_TYPES = [
    {**GOOD_REC, "title": 7},
    {**GOOD_REC, "title": ["a", "b"]},
    {**GOOD_REC, "body": {"html": "<p>x</p>"}},
    {**GOOD_REC, "answers": {"body": "x"}},
    {**GOOD_REC, "answers": "just a string"},
    {**GOOD_REC, "answers": [1, 2]},
    {**GOOD_REC, "answers": [{"body": ["x"]}]},
    {**GOOD_REC, "answers": [{"body": "a", "score": "5"}, {"body": "b", "score": 1}]},
    {**GOOD_REC, "answers": [{"body": "a", "is_accepted": "yes"}]},
    {**GOOD_REC, "answers": None, "answer": 42},
    ["not", "a", "record"],
    "a string",
    12,
]


def test_wrongly_typed_records_are_bad_records():
    assert stackoverflow.record_sample(GOOD_REC)[1] is None
    for rec in WRONG_TYPES:
        assert stackoverflow.record_sample(rec) == (None, "bad_record"), rec
    # An id of the wrong type falls back to the line's location; the record still counts.
    odd = {**GOOD_REC, "question_id": {"nested": [1, 2]}, "license": ["MIT"]}
    t = stackoverflow.records_to_table([odd], ["f.jsonl:3"], "so", "CC-BY-SA-4.0")
    assert t.to_pylist()[0]["path"] == "f.jsonl:3" and t["license"][0].as_py() == "CC-BY-SA-4.0"
    # Lone surrogates from JSON escapes: Arrow cannot hold them; the text is not_utf8 and
    # the id and license are kept with the surrogate replaced.
    rec = json.loads(
        r'{"question_id": "q\ud800", "title": "T \ud800", "body": "b",'
        r' "answers": ["a"], "license": "MIT\udc00"}'
    )
    row = stackoverflow.records_to_table([rec], ["f:1"], "so", "L").to_pylist()[0]
    assert (row["drop"], row["content"], row["path"], row["license"]) == (
        "not_utf8",
        None,
        "questions/q?",
        "MIT?",
    )


def _jsonl_rows(path: Path, max_bytes: int) -> list[dict]:
    batch = pa.table({"file": [str(path)]})
    return [
        r
        for t in stackoverflow.jsonl_batches(batch, "so", "CC-BY-SA-4.0", max_bytes)
        for r in t.to_pylist()
    ]


def test_deep_nesting_and_a_48_mb_line_are_counted_in_bounded_memory(tmp_path):
    good = json.dumps(GOOD_REC)
    deep = "[" * 200_000 + "]" * 200_000  # RecursionError in json.loads
    deep_obj = '{"title": ' * 100_000 + '"x"' + "}" * 100_000
    path = tmp_path / "posts.jsonl"
    with open(path, "w") as f:
        f.write(good + "\n" + deep + "\n" + deep_obj + "\n")
        f.write('{"title": "' + "a" * (48 << 20) + '"}\n')  # 48 MB on one line
        f.write(json.dumps(WRONG_TYPES[0]) + "\n" + good + "\n")
    tracemalloc.start()
    t0 = time.process_time()
    rows = _bounded(lambda: _jsonl_rows(path, 1_000_000), 120)
    elapsed = time.process_time() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [r["drop"] for r in rows] == ["", "bad_record", "bad_record", "huge", "bad_record", ""]
    assert [r["path"] for r in rows][3] == "posts.jsonl:4"
    assert peak < 16 << 20, f"held {peak >> 20} MB reading a 48 MB line"  # cap 4 MB + chunk
    assert elapsed < 10, elapsed  # CPU seconds (tracemalloc on)
    # The same file gzipped; and a FIFO or a truncated gzip is one unreadable row, not a hang.
    gz = tmp_path / "posts.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    assert [r["drop"] for r in _bounded(lambda: _jsonl_rows(gz, 1_000_000), 120)] == [
        r["drop"] for r in rows
    ]
    (tmp_path / "cut.jsonl.gz").write_bytes(gz.read_bytes()[:5000])
    os.mkfifo(tmp_path / "fifo.jsonl")
    for name, reason in (("cut.jsonl.gz", "unreadable"), ("fifo.jsonl", "not_regular")):
        got = _bounded(lambda n=name: _jsonl_rows(tmp_path / n, 1_000_000))
        assert got[-1]["drop"] == reason and name in got[-1]["path"], name


def test_pre_heavy_html_converts_in_linear_time():
    half = 1 << 19  # body + answer: a 1 MB record
    hostile = {
        "unclosed <pre>": "<p>x</p>" + "<pre>" * (half // 5),
        "unclosed <pre> then text": "<pre>" + "x " * (half // 2),
        "open tags": "<p>" + "<a" * (half // 2),
        "stray </pre>": "<p>" + "</pre>" * (half // 6),
        "<code> in <pre>": "<pre>" + "x<code>" * (half // 7),
        "comments": "<p>" + "<!--" * (half // 4),
        "charrefs": "<p>" + "&#x" * (half // 3),
    }
    for name, body in hostile.items():
        rec = {"title": "t", "body": body, "answers": [body]}
        t0 = time.process_time()  # CPU time: the shared test machine's load does not count
        stackoverflow.record_sample(rec)
        assert time.process_time() - t0 < 2.0, name  # the old regex: hours for 1 MB
    # A numeric reference too long for int() is U+FFFD, not a ValueError.
    assert html_to_text("<p>&#" + "1" * 5000 + ";</p>") == "\ufffd"
    assert html_to_text("<p>a &lt;b&gt; &amp; <code>c</code></p><pre><code>d\n</code></pre>") == (
        "a <b> & `c`\n\n```\nd\n```"
    )


def test_parquet_records_with_clashing_types_or_invalid_utf8_are_bad_records(ray_session, tmp_path):
    d = tmp_path / "so"
    d.mkdir()
    bad = pa.array([b"Reverse a list", b"caf\xe9"], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"title": bad, "answers": [["xs[::-1]"], ["b"]]}), d / "a.parquet")
    pq.write_table(pa.table({"title": [7], "answers": [["a"]]}), d / "b.parquet")  # int title
    (d / "c.parquet").write_bytes(b"PAR1 not parquet")
    ds = read_source(SourceConfig(kind="stackoverflow", path=str(d)), 10**6)
    rows = sorted((r["path"], r["drop"]) for r in _bounded(ds.take_all, 120))
    assert rows == [
        ("a.parquet", ""),
        ("a.parquet", "bad_record"),
        ("b.parquet", "bad_record"),
        ("c.parquet: unreadable (ArrowInvalid)", "unreadable"),
    ]


# --------------------------------------------------------------------------- The Stack

STACK_V1_DEDUP = [  # The Stack v1 dedup's columns (bigcode/the-stack-dedup), in its order
    "hexsha",
    "size",
    "ext",
    "lang",
    "max_stars_repo_path",
    "max_stars_repo_name",
    "max_stars_repo_head_hexsha",
    "max_stars_repo_licenses",
    "max_stars_count",
    "max_issues_repo_path",
    "max_issues_repo_name",
    "max_issues_repo_licenses",
    "max_forks_repo_path",
    "max_forks_repo_name",
    "max_forks_repo_licenses",
    "content",
    "avg_line_length",
    "max_line_length",
    "alphanum_fraction",
]


def stack_table(contents: list, paths: list | None = None, content_type=None) -> pa.Table:
    """Rows in The Stack v1 dedup layout (every real column, realistic types)."""
    n = len(contents)
    paths = paths if paths is not None else [f"src/m{i}.py" for i in range(n)]
    cols = {
        "hexsha": [f"{i:040x}" for i in range(n)],
        "size": [len(c or b"") for c in contents],
        "ext": ["py"] * n,
        "lang": ["Python"] * n,
        "max_stars_repo_path": paths,
        "max_stars_repo_name": [f"org/r{i}" for i in range(n)],
        "max_stars_repo_head_hexsha": ["0" * 40] * n,
        "max_stars_repo_licenses": [["MIT", "Apache-2.0"]] * n,
        "max_stars_count": [i for i in range(n)],
        "max_issues_repo_path": paths,
        "max_issues_repo_name": [f"org/r{i}" for i in range(n)],
        "max_issues_repo_licenses": [["MIT"]] * n,
        "max_forks_repo_path": paths,
        "max_forks_repo_name": [f"org/r{i}" for i in range(n)],
        "max_forks_repo_licenses": [["MIT"]] * n,
        "content": pa.array(contents, content_type or pa.string()),
        "avg_line_length": [30.0] * n,
        "max_line_length": [80] * n,
        "alphanum_fraction": [0.7] * n,
    }
    assert list(cols) == STACK_V1_DEDUP
    return pa.table(cols)


def test_stack_rows_of_any_bytes_or_type_get_their_own_reason():
    mapping = {
        k: next(c for c in cands if c in STACK_V1_DEDUP) for k, cands in stack.STACK_COLUMNS.items()
    }
    invalid = pa.array([GOOD.encode(), b"\xff\xfe" * 50, None], pa.binary()).view(pa.string())
    t = stack_table([None, None, None]).set_column(15, "content", invalid)
    rows = stack.stack_batch(t, mapping, "s", "", 10**6).to_pylist()
    assert [r["drop"] for r in rows] == ["", "not_utf8", ""] and rows[2]["content"] is None
    binary = stack_table([GOOD.encode(), b"\x00\x01ELF", b"\xc3\x28"], content_type=pa.binary())
    assert [r["drop"] for r in stack.stack_batch(binary, mapping, "s", "", 10**6).to_pylist()] == [
        "",
        "binary",
        "not_utf8",
    ]
    ints = stack_table([GOOD, GOOD], paths=[1, 2]).set_column(15, "content", pa.array([1, 2]))
    rows = stack.stack_batch(ints, mapping, "s", "", 10**6).to_pylist()
    assert [(r["path"], r["drop"], r["license"]) for r in rows] == [
        ("1", "bad_record", "MIT,Apache-2.0"),
        ("2", "bad_record", "MIT,Apache-2.0"),
    ]


def test_stack_files_with_clashing_schemas_read_in_parallel(ray_session, tmp_path):
    d = tmp_path / "stack"
    d.mkdir()
    pq.write_table(stack_table([GOOD, "y = 2\n" * 30]), d / "a.parquet")
    pq.write_table(  # int paths and binary content, one bad byte: Ray would refuse to unify
        stack_table([b"z = 3\n" * 30, b"\xff" * 9], paths=[7, 8], content_type=pa.binary()),
        d / "b.parquet",
    )
    (d / "0.parquet").write_bytes(b"PAR1 this is not parquet PAR1")  # sorts first
    os.mkfifo(d / "d.parquet")
    ds = read_source(SourceConfig(kind="stack_parquet", path=str(d)), 10**6)
    rows = {r["path"]: r["drop"] for r in _bounded(ds.take_all, 120)}
    assert rows == {
        "7": "",
        "8": "not_utf8",
        str(d / "0.parquet"): "unreadable",
        "src/m0.py": "",
        "src/m1.py": "",
    }  # the FIFO d.parquet is left out of the listing (a warning), never opened
    # A source with no readable file, or not in The Stack's layout, is a clear error.
    bad, other = tmp_path / "bad", tmp_path / "other"
    bad.mkdir(), other.mkdir()
    (bad / "x.parquet").write_bytes(b"nope")
    pq.write_table(pa.table({"text_body": ["x"]}), other / "x.parquet")
    with pytest.raises(CorpusError, match="no readable Parquet file"):
        read_source(SourceConfig(kind="stack_parquet", path=str(bad)), 10**6)
    with pytest.raises(CorpusError, match="has no 'content' column"):
        read_source(SourceConfig(kind="stack_parquet", path=str(other)), 10**6)


def test_hub_reads_parquet_in_parallel_through_an_fsspec_filesystem(ray_session, tmp_path):
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    # The hub's layout (datasets/<repo>/data/<lang>/*.parquet) on a local fsspec
    # filesystem: the same code path HfFileSystem takes, without the network.
    base = tmp_path / "hub" / "datasets" / "bigcode" / "the-stack-dedup" / "data" / "python"
    base.mkdir(parents=True)
    for i in range(3):  # the first file in two row groups: they are read apart
        pq.write_table(
            stack_table([GOOD + f"# {i}\n", "w = 0\n" * 30]),
            base / f"data-{i:05d}-of-00003.parquet",
            row_group_size=1 if i == 0 else None,
        )
    (base.parent / "README.md").write_text("not data")
    fs = DirFileSystem(path=str(tmp_path / "hub"), fs=LocalFileSystem())
    src = SourceConfig(kind="hub", path="bigcode/the-stack-dedup", data_dir="data/python")
    ds = stack.read_hub(src, "w", 10**6, filesystem=fs).materialize()
    rows = ds.take_all()
    assert len(rows) == 6 and {r["drop"] for r in rows} == {""}
    assert {r["repo"] for r in rows} == {"org/r0", "org/r1"} and rows[0]["source"] == "the-stack"
    assert {r["license"] for r in rows} == {"MIT,Apache-2.0"}
    # A read task per row group (no single-task fallback): a block for each of the 4.
    assert ds.num_blocks() >= 4
    assert stack.hub_base(SourceConfig(kind="hub", path="hf://datasets/a/b", data_dir="d/")) == (
        "datasets/a/b/d"
    )


def test_unreachable_hub_says_how_to_fix():
    from huggingface_hub import HfFileSystem

    # A real HfFileSystem against a closed local port: the hub is unreachable, no network.
    fs = HfFileSystem(endpoint="http://127.0.0.1:9", token=False)
    src = SourceConfig(kind="hub", path="bigcode/the-stack-dedup", data_dir="data/python")
    with pytest.raises(CorpusError, match=r"cannot list hf://datasets/bigcode.*HF_TOKEN"):
        stack.read_hub(src, "w", 1000, filesystem=fs)


# --------------------------------------------------------------------------- parse checks

NESTED = {  # each past its limit (parser stack 6,000; recursion limit 1,000) by a margin
    "parens": "(" * 300 + "1" + ")" * 300,  # SyntaxError: too many nested parentheses
    "unary": "-" * 20_000 + "1",  # MemoryError: parser stack
    "attributes": "a" + ".b" * 20_000,  # RecursionError during ast construction
    "calls": "f" + "()" * 20_000,
    "binops": "+".join(["1"] * 20_000),
    "lambdas": "lambda: " * 20_000 + "1",
}


def test_deeply_nested_code_is_a_syntax_error_drop_not_a_crash():
    cfg = FilterConfig(
        max_chars=10**6, max_line_length=10**6, max_avg_line_length=10**6, min_alphanum_fraction=0
    )
    for name, src in NESTED.items():
        code = src + "\n"
        assert filters.parses(code) is False, name
        assert filters.quality_reason(code, cfg, is_code=True) == "syntax_error", name
        assert parse.split_exercise(code, None) == (None, "syntax_error"), name
        assert parse.session_parses(">>> " + src + "\n") is False, name
