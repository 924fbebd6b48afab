"""`phi-ray run` orchestration: order, skip, missing stages, failure with a resume command."""

import pytest

from phi_ray import pipeline
from phi_ray.stages import ORDER, PIPELINE, Stage


def test_order_matches_design():
    assert ORDER == [
        "ingest",
        "annotate",
        "classify",
        "score",
        "synth",
        "decontam",
        "pack",
        "pretrain",
        "finetune",
        "evaluate",
        "report",
    ]
    for s in PIPELINE:
        assert all(ORDER.index(n) < ORDER.index(s.name) for n in s.needs), s.name


def test_ray_session_is_real(ray_session):
    @ray_session.remote
    def square(x):
        return x * x

    assert ray_session.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert ray_session.cluster_resources()["CPU"] == 2


def _fake_stages(monkeypatch, calls, fail=None):
    def make(name):
        def fn(cfg, run):
            if name == fail:
                raise RuntimeError(f"{name} exploded")
            calls.append(name)
            with run.stage(name, "h") as out:
                if out.skipped:
                    return out.result
                return out.finish(counts={"n": 1})

        return fn

    stages = []
    for s in PIPELINE:
        st = Stage(s.name, s.target, s.help, s.needs)
        fn = None if s.name == "pack" else make(s.name)  # pretend pack is not built
        object.__setattr__(st, "load", lambda fn=fn: fn)
        stages.append(st)
    monkeypatch.setattr(pipeline, "PIPELINE", tuple(stages))


def test_missing_and_blocked_then_skip(monkeypatch, tiny_cfg, ray_session):
    calls = []
    _fake_stages(monkeypatch, calls)
    res = pipeline.run_pipeline(tiny_cfg, echo=lambda *_: None)
    assert res.missing == ["pack"]
    assert res.blocked == ["pretrain", "finetune", "evaluate"]  # each needs pack, transitively
    assert res.ran == ["ingest", "annotate", "classify", "score", "synth", "decontam", "report"]
    res2 = pipeline.run_pipeline(tiny_cfg, echo=lambda *_: None)
    assert res2.ran == [] and res2.skipped == res.ran


def test_failure_names_stage_and_resume(monkeypatch, tiny_cfg, ray_session):
    calls = []
    _fake_stages(monkeypatch, calls, fail="classify")
    with pytest.raises(pipeline.StageFailed) as e:
        pipeline.run_pipeline(tiny_cfg, overrides=["x.y=1"], echo=lambda *_: None)
    msg = str(e.value)
    assert "stage 'classify' failed: RuntimeError: classify exploded" in msg
    assert (
        f"phi-ray run --preset tiny --run t --from classify --set x.y=1 --runs-dir {tiny_cfg.run.root}"
        in msg
    )
    assert calls == ["ingest", "annotate"]


def test_from_to_selection(monkeypatch, tiny_cfg, ray_session):
    calls = []
    _fake_stages(monkeypatch, calls)
    pipeline.run_pipeline(tiny_cfg, start="annotate", stop="score", echo=lambda *_: None)
    assert calls == ["annotate", "classify", "score"]
    with pytest.raises(ValueError, match="comes after"):
        pipeline.run_pipeline(tiny_cfg, start="score", stop="ingest", echo=lambda *_: None)
