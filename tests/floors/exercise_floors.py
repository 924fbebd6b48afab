"""Exercise phi-ray's uses of its key dependencies, at whatever versions are installed.

Run by ``test_floors.py`` inside the venv that holds the floors of pyproject.toml (with
``PYTHONPATH=REPO:REPO/tests``): each check goes through phi-ray's own code where the
version-sensitive call lives, so a floor that is too old fails here, naming the step.
Prints one ``ok <step>`` line per step.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import torch

STEPS = []


def step(fn):
    STEPS.append(fn)
    return fn


@step
def versions_are_the_floors() -> None:
    from floors import KEY, floors

    want = floors()
    got = {k: metadata.version(k) for k in KEY}
    from packaging.version import Version

    wrong = {k: (got[k], want[k]) for k in KEY if Version(got[k]) != Version(want[k])}
    assert not wrong, f"installed != floor: {wrong}"
    print(json.dumps(got))


@step
def transformers_export_and_reload(tmp: Path) -> None:
    """PhiForCausalLM from config, the export, from_pretrained(dtype=), the tokenizer."""
    from transformers import AutoTokenizer

    from phi_ray.config import ModelConfig
    from phi_ray.model.phi import build_model
    from phi_ray.model.tokenizer import get_tokenizer
    from phi_ray.train.checkpoint import export_hf, load_hf_weights

    mcfg = ModelConfig(n_layer=2, hidden_size=64, intermediate_size=192, n_head=4, rotary_dim=4)
    model = build_model(mcfg, seed=0).eval()
    export_hf(model.state_dict(), mcfg, str(tmp / "model"))
    weights = load_hf_weights(str(tmp / "model"))
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v), k
    tok = AutoTokenizer.from_pretrained(tmp / "model")
    s = "def f():\n    return '##'  # é\n\t\tpass"
    assert tok(s)["input_ids"] == get_tokenizer()(s)["input_ids"]
    assert tok.decode(tok(s)["input_ids"]) == s


@step
def datasketch_minhash_schemes(tmp: Path) -> None:
    from phi_ray.corpus.minhash import lsh_params
    from phi_ray.synth.dedup import near_duplicates, signature

    a = "def add(a, b):\n    return a + b\n" * 5
    sigs = [("a", signature(a)), ("b", signature(a + "# x\n")), ("c", signature("x = [1] * 9"))]
    assert set(near_duplicates(sigs, threshold=0.7)) == {"b"}
    assert lsh_params(0.7, 256) == (25, 10)


@step
def ray_data_expressions_and_reader(tmp: Path) -> None:
    import ray
    from ray.data.expressions import col, lit

    from phi_ray.corpus.stage import read_work

    ds = ray.data.from_items([{"id": i, "drop": "" if i % 3 else "short"} for i in range(30)])
    ds.write_parquet(str(tmp / "docs"))
    kept = read_work(str(tmp / "docs")).filter(expr=col("drop") == lit(""))
    assert kept.count() == 20


@step
def ray_train_pretrain_stage(tmp: Path) -> None:
    """The real pretrain stage (Ray Train V2, TorchTrainer, checkpoints, export), 4 steps."""
    from train_fixtures import train_cfg, write_pack

    from phi_ray.model.tokenizer import get_tokenizer
    from phi_ray.runs import RunDir
    from phi_ray.train.stage import pretrain

    cfg = train_cfg(
        tmp, "floors", "pretrain.max_steps=4", "pretrain.global_batch=4",
        "pretrain.micro_batch=4", "pretrain.checkpoint_every=2", "pretrain.eval_every=2",
        "pretrain.eval_batches=1", "pretrain.warmup_steps=1", "pretrain.progress=false",
    )  # fmt: skip
    run = RunDir.from_config(cfg)
    write_pack(run, get_tokenizer(), n_files=20)
    res = pretrain(cfg, run)
    assert (Path(res.path) / "model" / "model.safetensors").exists(), res


@step
def torch_fsdp2_single_rank(tmp: Path) -> None:
    """fully_shard + MixedPrecisionPolicy through phi-ray's wrap, and a full-state checkpoint.

    The forward/backward runs where FSDP2 is meant to (CUDA) or where this torch runs it on
    the CPU: 2.6's FSDP2 cannot (``'Stream' object has no attribute 'record_event'``), the
    project's torch (2.13) can. The wrap and the collective checkpoint run everywhere.
    """
    import torch.distributed as dist
    from packaging.version import Version

    from phi_ray.config import ModelConfig
    from phi_ray.model.phi import build_model
    from phi_ray.train import checkpoint as ckpt
    from phi_ray.train.loop import wrap_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mcfg = ModelConfig(n_layer=2, hidden_size=64, intermediate_size=128, n_head=4, rotary_dim=8)
        model = wrap_model(build_model(mcfg, seed=0), "fsdp", torch.device("cpu"), 1)
        optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
        if torch.cuda.is_available() or Version(torch.__version__) >= Version("2.13"):
            model(torch.arange(8)[None]).logits.sum().backward()
            optim.step()
        ckpt.save(str(tmp), 0, model, optim, {"step": 1}, None)
        state, _ = ckpt.load(str(tmp), 0, model, optim)
        assert state["step"] == 1
    finally:
        dist.destroy_process_group()


@step
def ray_serve_app_answers(tmp: Path) -> None:
    """serve/app.py's builder on Ray Serve, one completion over HTTP."""
    import httpx
    from app import app_builder  # serve/app.py
    from ray import serve

    from phi_ray.config import ModelConfig
    from phi_ray.model.phi import build_model
    from phi_ray.train.checkpoint import export_hf

    mcfg = ModelConfig(n_layer=1, hidden_size=64, intermediate_size=128, n_head=4, rotary_dim=8)
    export_hf(build_model(mcfg, seed=0).state_dict(), mcfg, str(tmp / "model"))
    port = 8765
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_builder({"model": str(tmp / "model"), "num_cpus": 1}), name="floors")
    base = f"http://127.0.0.1:{port}/v1"
    name = httpx.get(f"{base}/models", timeout=120).json()["data"][0]["id"]
    body = {"model": name, "prompt": "def f():", "max_tokens": 4, "temperature": 0}
    for _ in range(120):  # the replica loads the model in the background: 503 until then
        r = httpx.post(f"{base}/completions", json=body, timeout=120)
        if r.status_code != 503:
            break
        time.sleep(2)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] is not None
    serve.shutdown()


def main(only: list[str]) -> None:
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    for fn in STEPS:
        if only and fn.__name__ not in only:
            continue
        with tempfile.TemporaryDirectory() as d:
            fn(Path(d)) if fn.__code__.co_argcount else fn()
        print(f"ok {fn.__name__}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
