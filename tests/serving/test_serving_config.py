"""Inputs, preflight checks and the deploy config of the Serve app (no Ray started)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from phi_ray.cli import main
from phi_ray.serving.app import build_app, check_classifier_dir, check_model_dir
from phi_ray.serving.stage import resolve_inputs

REPO = Path(__file__).resolve().parents[2]


def _fake_model_dir(path: Path) -> Path:
    """The files a Hugging Face model directory has (binding the app loads none of them)."""
    path.mkdir(parents=True)
    for f in ("config.json", "tokenizer_config.json", "model.safetensors"):
        (path / f).write_text("{}")
    return path


def test_resolve_inputs_prefers_flags_then_finetune_then_pretrain(tiny_cfg, run_dir):
    with pytest.raises(FileNotFoundError, match=r"pass --model DIR.*pretrain"):
        resolve_inputs(tiny_cfg, run_dir)
    for stage in ("pretrain", "finetune", "classify"):
        with run_dir.stage(stage, "h") as out:
            out.finish()
    model, clf = resolve_inputs(tiny_cfg, run_dir)
    assert model == run_dir.path("finetune", "model")
    assert clf == run_dir.path("classify", "classifier")
    tiny_cfg.serve.model, tiny_cfg.serve.classifier = "/m", "/c"
    assert resolve_inputs(tiny_cfg, run_dir) == ("/m", "/c")


def test_preflight_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"serve\.model: .* is not a directory"):
        check_model_dir(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        check_model_dir(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"serve\.classifier: .*no model\.joblib"):
        check_classifier_dir(str(tmp_path / "empty"))
    assert check_model_dir(str(_fake_model_dir(tmp_path / "m"))) == str(tmp_path / "m")


def test_cli_serve_with_a_bad_model_fails_cleanly(tmp_path, capsys):
    rc = main(["serve", "--model", str(tmp_path / "nope"), "--runs-dir", str(tmp_path)])
    assert rc == 1
    assert "serve.model:" in capsys.readouterr().err


def test_deploy_config_matches_the_app(tmp_path, tiny_cfg):
    from ray.serve.schema import ServeDeploySchema

    cfg = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve/config.yaml").read_text()))
    (app,) = cfg.applications
    assert app.import_path == "serve.app:app_builder"
    model = next(d for d in app.deployments if d.name == "CompletionModel")
    assert model.ray_actor_options.num_gpus == 1 and model.autoscaling_config
    sys.path.insert(0, str(REPO))
    try:
        from serve.app import app_builder
    finally:
        sys.path.remove(str(REPO))
    built = app_builder({"model": str(_fake_model_dir(tmp_path / "m")), "max_batch_size": 4})
    names = {d.name for d in _deployments(built)}
    assert names == {d.name for d in app.deployments} - {"QualityScorer"}
    with pytest.raises(ValueError, match="model=DIR"):
        app_builder({})
    # The same builder over the tiny preset's serve section.
    scfg = tiny_cfg.serve
    assert build_app(scfg, str(tmp_path / "m")) is not None


def _deployments(app) -> list:
    """Every deployment bound into an application (the ingress and its arguments)."""
    out, todo = [], [app._bound_deployment]
    while todo:
        d = todo.pop()
        out.append(d)
        todo += [a._bound_deployment for a in d.init_args if hasattr(a, "_bound_deployment")]
    assert all(type(d).__name__ == "Deployment" for d in out)
    return out
