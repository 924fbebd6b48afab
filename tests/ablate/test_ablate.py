"""phi-ray ablate: equal-token arms, the solution-loss metric, resume after a kill.

Whether filtered beats random is measured and reported, never asserted here.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from ablate_fixtures import TINY, ablate_cfg, write_scored_run

from phi_ray.ablate import arms, metrics
from phi_ray.runs import RunDir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _ids(d: str) -> set[str]:
    return {i for f in glob.glob(f"{d}/*.parquet") for i in pq.read_table(f)["id"].to_pylist()}


def _windows(split_dir: str) -> np.ndarray:
    m = json.load(open(f"{split_dir}/manifest.json"))
    arrs = [np.load(f"{split_dir}/{s['file']}") for s in m["shards"]]
    for a, s in zip(arrs, m["shards"], strict=True):
        assert a.shape[0] == s["n_windows"]
    return np.concatenate(arrs)


def test_window_keeps_context_and_fits():
    assert metrics.window(10, 50, 64) == (0, 50)
    assert metrics.window(40, 100, 64) == (36, 100)  # prompt's head dropped
    assert metrics.window(10, 200, 64) == (9, 73)  # solution longer: its tail dropped
    assert metrics.window(0, 200, 64) == (0, 64)
    for n_p, n, L in [(5, 300, 16), (100, 120, 16), (1, 2, 1)]:
        s, e = metrics.window(n_p, n, L)
        assert e - s == min(n, L) and 0 <= s < max(n_p, 1) + (n - n_p)


def test_lowest_cutoff_counts_at_least_n():
    hist = np.zeros(arms.HIST_BINS, np.int64)
    hist[[10, 20, 30]] = [3, 5, 7]
    assert arms.lowest_cutoff(hist, 3) == 11 / arms.HIST_BINS
    assert arms.lowest_cutoff(hist, 4) == 21 / arms.HIST_BINS  # ties at 20 all go in
    assert arms.lowest_cutoff(hist, 100) == 1.0


def test_truncate_windows_keeps_the_first_n(tmp_path):
    from phi_ray.packing.windows import WindowWriter, manifest, write_manifest

    w = WindowWriter(str(tmp_path / "train"), 8, 5)
    w.add(np.arange(1, 200), "x")
    write_manifest(str(tmp_path / "train"), manifest(8, [w.close()]))
    before = _windows(str(tmp_path / "train"))
    m = arms.truncate_windows(str(tmp_path / "train"), 12)
    after = _windows(str(tmp_path / "train"))
    assert m["n_windows"] == 12 == after.shape[0] and m["truncated_from"] == before.shape[0]
    assert np.array_equal(after, before[:12])
    assert len(os.listdir(tmp_path / "train")) == 1 + 3  # shards past 12 windows deleted
    with pytest.raises(ValueError, match="cannot keep"):
        arms.truncate_windows(str(tmp_path / "train"), 13)


def test_solution_loss_matches_transformers(tokenizer):
    """Our batched, padded loss on solution tokens against transformers' own masked loss."""
    import torch
    from transformers import PhiConfig, PhiForCausalLM

    from phi_ray.evaluate.problems import load_humaneval

    torch.manual_seed(0)
    cfg = PhiConfig(vocab_size=51200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=2048)  # fmt: skip
    model = PhiForCausalLM(cfg).eval()
    probs = load_humaneval()[:5]
    pairs = metrics.encode_pairs(tokenizer, probs)
    ours = metrics.solution_loss(model, pairs, max_len=2048, batch_size=3)
    total, count, per = 0.0, 0, []
    for p in probs:  # independent: text -> ids, labels -100 on the prompt, one at a time
        pi = tokenizer(p.prompt, add_special_tokens=False)["input_ids"]
        si = tokenizer(p.canonical_solution, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([pi + si])
        labels = ids.clone()
        labels[0, : len(pi)] = -100
        with torch.no_grad():
            loss = float(model(input_ids=ids, labels=labels).loss)
        total, count = total + loss * len(si), count + len(si)
        per.append(loss)
    assert ours["problems"] == 5 and ours["tokens"] == count
    assert ours["loss"] == pytest.approx(total / count, rel=1e-4)
    assert ours["problem_mean_loss"] == pytest.approx(float(np.mean(per)), rel=1e-4)
    # A model is not credited for the prompt: scoring prompt tokens too changes the number.
    short = metrics.solution_loss(model, pairs, max_len=64, batch_size=2)
    assert short["tokens"] < count


def test_arms_select_their_files_and_hold_out_the_same_ones(tmp_path, ray_session, tokenizer):
    cfg = ablate_cfg(tmp_path / "runs", "a", "ablate.arms=[filtered,random,lowest]")
    run = RunDir.from_config(cfg)
    rows = write_scored_run(run, tokenizer, n_files=40)
    out = str(tmp_path / "src")
    info = arms.split_arms(cfg, run, out)
    held = _ids(f"{out}/heldout")
    src = {a: _ids(f"{out}/{a}") for a in cfg.ablate.arms}
    assert held and all(not (held & s) for s in src.values())
    assert {a: len(s) for a, s in src.items()} == {a: info["arms"][a]["docs"] for a in src}
    kept = {i for i, r in rows.items() if r["kept"]}
    assert src["filtered"] == kept - held
    assert src["random"] <= set(rows) - held and src["random"] != src["filtered"]
    assert len(src["lowest"]) >= len(src["filtered"])
    q = {i: np.float32(r["quality"]) for i, r in rows.items()}
    assert max(q[i] for i in src["lowest"]) <= min(q[i] for i in src["filtered"])
    again = str(tmp_path / "again")  # the same seed selects the same files
    arms.split_arms(cfg, run, again)
    assert all(_ids(f"{again}/{a}") == src[a] for a in src)


def _cmd(root: str, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "phi_ray.cli", "ablate", "--runs-dir", root, "--run", "a"]
    for s in [*TINY, "ablate.seeds=1", "ablate.arms=[filtered,random]"]:
        args += ["--set", s]
    return [*args, *extra]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a loaded 2-core machine; about a minute on a calm one
def test_killed_ablation_resumes_with_equal_arms_and_finished_ones_skipped(
    tmp_path, tokenizer, ray_session
):
    """SIGKILL the driver (one unit at a time, ``--to train``) once the first arm has trained;
    the rerun, to the end with both units side by side, skips the data and that arm by hash,
    trains only the rest, evaluates both and writes the summary and the report section.
    ~1.5 min on a calm 2-core box."""
    root = str(tmp_path / "runs")
    run = RunDir.from_config(ablate_cfg(root))
    write_scored_run(run, tokenizer, n_files=40)
    work = os.path.join(run.uri, ".work", "ablate")
    # The drivers join the session's Ray (a SIGKILLed driver's job is cleaned up by Ray;
    # starting a fresh cluster per driver times out on a loaded machine).
    address = ray_session.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": REPO, "RAY_ADDRESS": address}
    log = open(tmp_path / "first.log", "w")
    first_cmd = _cmd(root, "--set", "ablate.parallel_runs=1", "--to", "train")
    proc = subprocess.Popen(first_cmd, env=env, cwd=REPO, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    first = os.path.join(work, "train-filtered-s1234", "_SUCCESS.json")
    deadline = time.time() + 900  # a loaded machine: three packs and one training run
    while not os.path.exists(first) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, mid-way through the second arm
    proc.wait()
    log.close()
    assert os.path.exists(first), (tmp_path / "first.log").read_text()[-3000:]
    done = sorted(glob.glob(os.path.join(work, "train-*", "_SUCCESS.json")))
    assert len(done) < 2, "killed too late: every unit had finished"
    data = os.path.join(work, "data")
    n = json.load(open(os.path.join(data, "_SUCCESS.json")))["equal_windows"]
    for a in ("filtered", "random"):  # equal tokens: the same number of full windows
        assert _windows(os.path.join(data, a, "train")).shape == (n, 33)
    data_marker = open(os.path.join(data, "_SUCCESS.json"), "rb").read()
    before = {p: open(p, "rb").read() for p in done}
    res = subprocess.run(_cmd(root, "--set", "ablate.parallel_runs=2"), env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "2 arm x seed units, 2 at a time" in res.stderr
    after = sorted(glob.glob(os.path.join(work, "train-*", "_SUCCESS.json")))
    assert len(after) == 2
    assert not glob.glob(os.path.join(work, "*.tmp-*")), "the killed unit's leftovers remain"
    assert open(os.path.join(data, "_SUCCESS.json"), "rb").read() == data_marker
    for p, b in before.items():  # finished units skipped by hash: markers untouched
        assert open(p, "rb").read() == b
    for p in after:
        s = json.load(open(p))
        assert s["steps"] == 2 and os.path.exists(os.path.join(os.path.dirname(p), "model"))
    # Evaluated and assembled: every arm's measures, its curve, the printed table, the report.
    summary = json.load(open(os.path.join(run.uri, "ablate", "summary.json")))
    assert summary["units"] == ["filtered-s1234", "random-s1234"]
    for arm in ("filtered", "random"):
        m = summary["arms"][arm]
        assert m["seeds"] == [1234] and np.isfinite(m["humaneval_solution_loss"]["mean"])
        assert np.isfinite(m["heldout_loss"]["mean"]) and m["humaneval_pass@1"]["n"] == 1
        assert arm in res.stdout
        curve = os.path.join(run.uri, "ablate", "arms", f"{arm}-s1234", "curve.jsonl")
        assert [json.loads(x)["step"] for x in open(curve) if "loss" in json.loads(x)]
    from phi_ray.report import sections

    html = sections.ablation(run)
    assert html.count("<img") == 2 and "filtered-s1234" in html and "random-s1234" in html


def test_summary_is_mean_and_sample_std_over_seeds():
    from phi_ray.ablate.stage import summarize, table

    def unit(arm, seed, sl, held, p1):
        return {"arm": arm, "seed": seed, "solution_loss": {"humaneval": {"loss": sl}},
                "heldout_loss": {"loss": held}, "pass_at_k": {"humaneval": {"pass@1": p1}},
                "final_train_metrics": {"loss": 5.0}}  # fmt: skip

    rows = [unit("filtered", 1, 4.0, 6.0, 0.0), unit("filtered", 2, 5.0, 6.5, 0.05),
            unit("random", 1, 3.0, 7.0, 0.0)]  # fmt: skip
    s = summarize(rows, ["filtered", "random"])
    f = s["filtered"]["humaneval_solution_loss"]
    assert f["mean"] == 4.5 and f["std"] == pytest.approx(np.std([4.0, 5.0], ddof=1))
    assert s["random"]["humaneval_solution_loss"]["std"] == 0.0  # one seed: no spread
    assert s["filtered"]["seeds"] == [1, 2]
    text = table(s, 1000)
    assert "4.5000 ± 0.7071" in text and "2.50% ± 3.54" in text and "1,000" in text


def test_report_section_shows_every_arm_and_the_paper(tmp_path):
    from phi_ray.ablate.stage import PAPER_350M, summarize
    from phi_ray.report import sections

    run = RunDir(str(tmp_path), "r")
    rows = []
    for arm, sl in (("filtered", 4.25), ("random", 4.5)):
        rows.append({"arm": arm, "seed": 1, "solution_loss": {"humaneval": {"loss": sl}},
                     "heldout_loss": {"loss": 6.0}, "pass_at_k": {"humaneval": {"pass@1": 0.0}},
                     "final_train_metrics": {}})  # fmt: skip
        d = tmp_path / "r" / "ablate" / "arms" / f"{arm}-s1"
        d.mkdir(parents=True)
        (d / "curve.jsonl").write_text(
            "".join(
                json.dumps({"step": s, "loss": 9.0 - s, "val_loss": 9.5 - s}) + "\n"
                for s in (1, 2, 3)
            )
        )
    summary = {"arms": summarize(rows, ["filtered", "random"]), "units": ["filtered-s1", "random-s1"],
               "data": {"equal_tokens": 1000, "equal_windows": 10, "heldout_windows": 2},
               "paper_350m_humaneval_pass1": PAPER_350M}  # fmt: skip
    run.write_json(run.path("ablate", "summary.json"), summary)
    html = sections.ablation(run)
    assert html.count("<img") == 2  # held-out and training curves
    assert "filtered" in html and "random" in html and "17.68" in html and "12.19" in html
    assert "4.25 ± 0" in html and "4.5 ± 0" in html
    for unit in ("filtered-s1", "random-s1"):  # every curve named in text, not only in the PNG
        assert (
            f"{unit}: 3 points, 6.5 at step 3" in html and f"{unit}: 3 points, 6 at step 3" in html
        )
    assert sections.ablation(RunDir(str(tmp_path), "empty")) is None


def test_every_arm_gets_the_same_settings_and_a_held_out_curve(tmp_path):
    from phi_ray.ablate.stage import CURVE_POINTS, train_config, units

    cfg = ablate_cfg(tmp_path, "a", "ablate.max_steps=120", "pretrain.eval_every=60")
    a, b = train_config(cfg, 7), train_config(cfg, 8)
    assert a.pretrain == b.pretrain and (a.run.seed, b.run.seed) == (7, 8)
    assert a.pretrain.max_steps == 120 and 120 // a.pretrain.eval_every >= CURVE_POINTS
    rare = ablate_cfg(tmp_path, "a", "ablate.max_steps=120", "pretrain.eval_every=5")
    assert train_config(rare, 7).pretrain.eval_every == 5  # never evaluates less often
    two = ablate_cfg(tmp_path, "a", "ablate.seeds=2", "ablate.arms=[filtered,random,lowest]")
    assert units(two)[:3] == [("filtered", 1234), ("random", 1234), ("lowest", 1234)]
    assert len(units(two)) == 6


def test_units_run_side_by_side_as_the_cluster_holds_them(tmp_path, ray_session):
    from phi_ray.ablate.stage import parallelism

    cpus = int(ray_session.cluster_resources()["CPU"])
    cfg = ablate_cfg(tmp_path, "a")  # one worker, one CPU each
    assert parallelism(cfg, 8) == cpus and parallelism(cfg, 1) == 1
    wide = ablate_cfg(tmp_path, "a", f"pretrain.cpus_per_worker={cpus + 1}")
    assert parallelism(wide, 8) == 1  # a run larger than the cluster still runs, alone
    gpu = ablate_cfg(tmp_path, "a", "pretrain.use_gpu=true")
    assert parallelism(gpu, 8) == 1  # no GPU here: one at a time
    assert parallelism(ablate_cfg(tmp_path, "a", "ablate.parallel_runs=3"), 8) == 3
