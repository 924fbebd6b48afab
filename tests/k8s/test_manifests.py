"""The KubeRay manifests in k8s/ deploy what this checkout has.

- Each document validates against its KubeRay CRD (vendored v1.7.0 schemas, see
  ``crds/README.md``), strictly as ``kubeconform -strict`` does: the API server silently
  prunes fields a CRD does not know, so a misspelled field would be dropped, not refused.
- A RayService's ``serveConfigV2`` is a valid Serve config (Ray's own schema), and each
  application's ``import_path`` builds an application from its ``args`` through Ray's own
  loader (import, the one-parameter builder rule, the call).
- A RayJob's ``entrypoint`` names a script of this checkout, its arguments parse with that
  script's parser and resolve to a valid config; its ``runtimeEnvYAML`` is a runtime env.
"""

from __future__ import annotations

import ast
import copy
import functools
import gzip
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = Path(__file__).with_name("crds")
PLURALS = {"RayCluster": "rayclusters", "RayJob": "rayjobs", "RayService": "rayservices"}
MANIFESTS = sorted((REPO / "k8s").glob("*.yaml"))


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in MANIFESTS:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.name}#{i}", doc))
    return out


DOCS = _docs()


def _strict(schema: Any) -> Any:
    """``additionalProperties: false`` on every closed object schema (kubeconform -strict)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) if k != "properties" else v for k, v in schema.items()}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    return out


@functools.cache
def _validator(kind: str) -> jsonschema.Draft7Validator:
    doc = json.loads(gzip.decompress((CRDS / f"{PLURALS[kind]}.json.gz").read_bytes()))
    return jsonschema.Draft7Validator(_strict(doc["openAPIV3Schema"]))


def _crd_errors(doc: dict[str, Any]) -> list[str]:
    errors = _validator(doc["kind"]).iter_errors(doc)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def _of_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, d) for name, d in DOCS if d["kind"] == kind]


def test_manifests_are_the_three_kuberay_kinds():
    assert {d["kind"] for _, d in DOCS} == set(PLURALS), [n for n, _ in DOCS]
    assert all(d["apiVersion"] == "ray.io/v1" for _, d in DOCS)


@pytest.mark.parametrize("name,doc", DOCS, ids=[n for n, _ in DOCS])
def test_manifest_validates_against_its_crd(name, doc):
    assert _crd_errors(doc) == []


def test_crd_check_refuses_unknown_fields_and_wrong_types():
    _, doc = _of_kind("RayService")[0]
    typo = copy.deepcopy(doc)
    typo["spec"]["rayClusterConfig"]["workerGroupSpec"] = typo["spec"]["rayClusterConfig"].pop(
        "workerGroupSpecs"
    )
    assert any("workerGroupSpec" in e for e in _crd_errors(typo))
    bad_type = copy.deepcopy(doc)
    bad_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "one"
    assert any("replicas" in e for e in _crd_errors(bad_type))
    deep = copy.deepcopy(doc)  # inside the pod template, which the CRD embeds in full
    deep["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "imagePullPolicy_"
    ] = "Always"
    assert any("imagePullPolicy_" in e for e in _crd_errors(deep))


@pytest.mark.parametrize("name,doc", DOCS, ids=[n for n, _ in DOCS])
def test_ray_version_matches_the_image(name, doc):
    spec = doc["spec"].get("rayClusterConfig") or doc["spec"].get("rayClusterSpec") or doc["spec"]
    version = spec["rayVersion"]
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert images and all(f"ray{version}" in i for i in images), (version, images)


# --- Serve applications ------------------------------------------------------------------


def _serve_configs() -> list[tuple[str, dict[str, Any]]]:
    out = [(n, yaml.safe_load(d["spec"]["serveConfigV2"])) for n, d in _of_kind("RayService")]
    return [*out, ("serve/config.yaml", yaml.safe_load((REPO / "serve/config.yaml").read_text()))]


SERVE_CONFIGS = _serve_configs()


def _fake_dirs(tmp: Path) -> dict[str, str]:
    """Directories that pass the builder's checks (it checks files; replicas load them)."""
    model, clf = tmp / "model", tmp / "classifier"
    model.mkdir(parents=True)
    clf.mkdir(parents=True)
    for f in ("config.json", "tokenizer_config.json", "model.safetensors"):
        (model / f).write_text("{}")
    (clf / "model.joblib").write_bytes(b"")
    return {"model": str(model), "classifier": str(clf)}


def _build(import_path: str, args: dict[str, Any]) -> Any:
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    return call_user_app_builder_with_args_if_necessary(import_attr(import_path), args)


@pytest.mark.parametrize("name,cfg", SERVE_CONFIGS, ids=[n for n, _ in SERVE_CONFIGS])
def test_serve_config_builds_from_this_checkout(name, cfg, tmp_path, monkeypatch):
    from ray.serve import Application
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(cfg)  # what `serve deploy` / KubeRay submit
    monkeypatch.syspath_prepend(str(REPO))  # the app's working_dir is the repo root
    assert cfg["applications"]
    for app in cfg["applications"]:
        args = dict(app.get("args") or {})
        for key in ("model", "classifier"):
            # the builder checks a local directory on the node: no object-store URIs
            assert key not in args or str(args[key]).startswith("/"), (key, args.get(key))
        args |= {k: v for k, v in _fake_dirs(tmp_path / app["name"]).items() if k in args}
        assert isinstance(_build(app["import_path"], args), Application)


def test_wrong_builder_or_arg_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    args = _fake_dirs(tmp_path)
    # the manifest: build_app takes (cfg, model_dir, classifier_dir), not one dict
    with pytest.raises(TypeError, match="exactly one parameter"):
        _build("serve.app:build_app", args)
    with pytest.raises(Exception, match="modle"):
        _build("serve.app:app_builder", args | {"modle": "x"})


# --- Ray jobs ----------------------------------------------------------------------------


def _job_command(script: Path) -> str:
    """The phi-ray sub-command a job script runs: ``main(["<cmd>", *sys.argv[1:]])``."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main":
            (argv,) = node.args
            assert isinstance(argv, ast.List) and isinstance(argv.elts[0], ast.Constant)
            return argv.elts[0].value
    raise AssertionError(f"{script}: no main([...]) call")


def _check_entrypoint(entrypoint: str) -> Any:
    from phi_ray.cli import _overrides, build_parser
    from phi_ray.config import load_config

    python, script, *argv = shlex.split(entrypoint)
    assert python == "python" and script.startswith("jobs/"), entrypoint
    path = REPO / script
    assert path.is_file(), script
    args = build_parser().parse_args([_job_command(path), *argv])
    return load_config(args.preset, _overrides(args))


@pytest.mark.parametrize("name,doc", _of_kind("RayJob"), ids=[n for n, _ in _of_kind("RayJob")])
def test_job_entrypoint_runs_a_script_of_this_checkout(name, doc):
    from ray.runtime_env import RuntimeEnv

    cfg = _check_entrypoint(doc["spec"]["entrypoint"])
    assert cfg.run.root.startswith(("s3://", "gs://", "/")), cfg.run.root  # shared storage
    env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"])
    # the submitter zips working_dir from its own disk (the image's copy of this repo);
    # here that is this checkout
    assert env["working_dir"].startswith("/"), env["working_dir"]
    RuntimeEnv(**(env | {"working_dir": str(REPO)}))


def test_entrypoint_check_refuses_what_would_fail_on_the_cluster():
    with pytest.raises(AssertionError):
        _check_entrypoint("python jobs/no_such_stage.py --preset phi1")
    with pytest.raises(SystemExit):  # argparse: unknown stage name
        _check_entrypoint("python jobs/pipeline.py --preset phi1 --from nowhere")
    with pytest.raises(Exception, match="no_such_key"):
        _check_entrypoint("python jobs/pipeline.py --preset phi1 --set llm.no_such_key=1")
