"""The synth stage: textbooks and exercises from an LLM, or exercises mined offline.

``synth.source``: ``llm`` generates both kinds through :mod:`phi_ray.llm`; ``mined`` takes
exercises from ``score/filtered/`` and skips textbooks (they need an LLM); ``auto`` is
``llm`` when ``llm.base_url`` is set, else ``mined``. Outputs (``runs/<run>/synth/``):
``textbooks/*.parquet``, ``exercises/*.parquet`` and ``diversity.json``; every drop is
counted per reason in ``_SUCCESS.json``, with tokens and dollars spent.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pyarrow.fs as pafs

from phi_ray.config import Config
from phi_ray.runs import RunDir, StageResult, files_fingerprint
from phi_ray.runtime import init_ray
from phi_ray.synth import diversity, postprocess
from phi_ray.synth.mine import mine_exercises
from phi_ray.synth.shards import finish_shards, generate_shards
from phi_ray.synth.topics import TopicTree

log = logging.getLogger("phi_ray.synth")
STAGE = "synth"
KINDS = ("textbooks", "exercises")


def resolve_source(cfg: Config) -> str:
    """``llm`` or ``mined``; a clear error when ``llm`` is asked for without an endpoint."""
    src = cfg.synth.source
    if src == "auto":
        return "llm" if cfg.llm.base_url else "mined"
    if src == "llm" and not cfg.llm.base_url:
        raise ValueError(
            "synth.source=llm needs llm.base_url (an OpenAI-compatible endpoint); "
            "set it, or use synth.source=mined to mine exercises offline"
        )
    return src


def stage_hash(cfg: Config, run: RunDir) -> str:
    """synth's sections, score's output when exercises are mined, and the topic tree's
    file when an LLM writes from it (edited in place, it is new input under the same path)."""
    source = resolve_source(cfg)
    mining = source == "mined" and "exercises" in cfg.synth.kinds
    return run.config_hash(
        cfg,
        ("synth", "llm") if source == "llm" else ("synth",),
        ("score",) if mining else (),
        inputs=files_fingerprint(cfg.synth.topic_tree) if source == "llm" else "",
    )


def _carry_over(run: RunDir, out_dir: str, kind: str) -> bool:
    """Copy ``kind`` from the previous complete synth output (``phi-ray synth textbooks``
    then ``phi-ray synth exercises`` keeps both)."""
    if run.read_success(STAGE) is None:
        return False
    src = run._fs_path(run.path(STAGE, kind))
    if run.fs.get_file_info(src).type != pafs.FileType.Directory:
        return False
    pafs.copy_files(src, run._fs_path(f"{out_dir}/{kind}"), run.fs, run.fs)
    return True


def _finish_mined(cfg: Config, run: RunDir, ds, drops: Counter, out_dir: str):
    """Dedup, cap, write and measure mined exercises, all on Ray Data."""
    s = cfg.synth
    n, sample, out = postprocess.finish(run, ds, s, "exercises", drops, out_dir, tokenize=True)
    report = diversity.report(
        [r["prompt"] + r["completion"] for r in sample],
        s.near_dup_threshold,
        rows=None,
        tree=None,
        max_rows=s.diversity_max_rows,
        seed=cfg.run.seed,
    )
    # Distinct module topics over every row: a set when the sample is every row, else a
    # groupby in Ray (not a collected set).
    if n <= s.diversity_max_rows:  # the sample is every row
        report["distinct_topics"] = len({r["topic"] for r in sample})
    else:
        report["distinct_topics"] = out.groupby("topic").count().count()
    report["rows"] = n
    return n, report


def run(cfg: Config, run: RunDir) -> StageResult:
    """Build ``synth/``: see the module docstring."""
    init_ray(cfg)
    source = resolve_source(cfg)
    mining = source == "mined" and "exercises" in cfg.synth.kinds
    h = stage_hash(cfg, run)
    with run.stage(STAGE, h) as out:
        if out.skipped:
            return out.result
        filtered = run.require("score", needed_by="synth (mined exercises)") if mining else None
        tree = TopicTree.load(cfg.synth.topic_tree) if source == "llm" else None
        client = None
        if source == "llm":
            from phi_ray.llm import LLMClient

            client = LLMClient(cfg.llm, run.work_path(STAGE), model=cfg.synth.model)
        counts: dict[str, Any] = {}
        extra: dict[str, Any] = {"source": source, "skipped_kinds": {}, "drops": {}, "spend": {}}
        reports: dict[str, Any] = {}
        try:
            for kind in KINDS:
                if kind not in cfg.synth.kinds:
                    carried = _carry_over(run, out.tmp, kind)
                    why = "not requested (synth.kinds)" + ("; carried over" if carried else "")
                    extra["skipped_kinds"][kind] = why
                    if not carried:
                        postprocess.write_rows(run, out.tmp, kind, [], cfg.synth.rows_per_file)
                    continue
                if source == "mined" and kind == "textbooks":
                    why = (
                        "no LLM configured (llm.base_url is null or synth.source=mined): "
                        "textbooks need one; set llm.base_url to generate them"
                    )
                    log.warning("synth: textbooks skipped: %s", why)
                    extra["skipped_kinds"][kind] = why
                    counts["textbooks_skipped"] = 1
                    postprocess.write_rows(run, out.tmp, kind, [], cfg.synth.rows_per_file)
                    continue
                if source == "llm":
                    shards, drops, spend = generate_shards(cfg, run, kind, tree, client, h)
                    n, reports[kind] = finish_shards(cfg, run, kind, shards, drops, tree, out.tmp)
                else:
                    ds, drops, spend = mine_exercises(cfg, run, filtered, h)
                    n, reports[kind] = _finish_mined(cfg, run, ds, drops, out.tmp)
                counts[f"{kind}_generated"] = spend.get("generated", 0)
                counts[f"{kind}_kept"] = n
                counts.update({f"{kind}_drop_{k}": v for k, v in sorted(drops.items())})
                extra["drops"][kind] = dict(drops)
                extra["spend"][kind] = {k: v for k, v in spend.items() if k != "generated"}
                log.info(
                    "synth %s: kept %d of %d; drops %s",
                    kind,
                    n,
                    spend.get("generated", 0),
                    dict(drops),
                )
        finally:
            if client is not None:
                client.close()
        spend_all = Counter()
        for sp in extra["spend"].values():
            spend_all.update(sp)
        extra["cost_usd"] = round(spend_all.get("cost_usd", 0.0), 6)
        extra["cost_usd_this_run"] = round(spend_all.get("cost_usd_this_run", 0.0), 6)
        extra["tokens"] = int(
            spend_all.get("prompt_tokens", 0) + spend_all.get("completion_tokens", 0)
        )
        extra["model"] = client.model if client is not None else "mined"
        run.write_json(f"{out.tmp}/diversity.json", reports)
        extra["diversity"] = reports
        return out.finish(counts=counts, **extra)
