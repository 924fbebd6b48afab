"""Completions for evaluation problems: from a Hugging Face checkpoint on Ray actors, or
from any OpenAI-compatible ``/v1/completions`` endpoint (phi-ray's Serve app, vLLM).

Greedy decoding when ``temperature == 0`` (pass@1), sampling with ``temperature`` /
``top_p`` otherwise; ``n_samples`` completions per problem. Completions are cut at the
BigCode harness's stop sequences: the function body ends where the next top-level
statement begins. Finished batches are appended to a resume file, so a crashed or
preempted generation continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from phi_ray.evaluate.problems import Problem

log = logging.getLogger(__name__)

# bigcode-evaluation-harness (tasks/humaneval.py, mbpp.py), plus the end-of-text token.
STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<|endoftext|>")
_OPENAI_MAX_STOPS = 4  # api.openai.com's cap; the rest are applied client-side (truncate)

Unit = tuple[str, int]  # (task_id, sample index)


def truncate(completion: str, stops: Iterable[str] = STOP_SEQUENCES) -> str:
    """The completion up to the first stop sequence."""
    cut = [i for s in stops if (i := completion.find(s)) >= 0]
    return completion[: min(cut)] if cut else completion


def _units(problems: list[Problem], n: int, done: set[Unit]) -> list[Unit]:
    return [(p.task_id, i) for p in problems for i in range(n) if (p.task_id, i) not in done]


class ResumeLog:
    """Append-only JSONL of finished samples (task_id, sample, completion, raw)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.rows: dict[Unit, dict[str, Any]] = {}
        if path and os.path.exists(path):
            with open(path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):  # a line torn by a crash: drop it
                    data = data[: data.rfind(b"\n") + 1]
                    f.truncate(len(data))
            for line in data.decode("utf-8").splitlines():
                row = json.loads(line)
                self.rows[(row["task_id"], row["sample"])] = row

    def add(self, rows: list[dict[str, Any]]) -> None:
        for r in rows:
            self.rows[(r["task_id"], r["sample"])] = r
        if self.path:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())


# --------------------------------------------------------------------------- HF models


def _stop_criteria_base() -> type:
    from transformers import StoppingCriteria

    return StoppingCriteria


class _StopOnStrings(_stop_criteria_base()):
    """Per-row stop once a stop sequence appears in the newest generated tokens.

    transformers' own ``stop_strings`` precomputes tables over the whole vocabulary on
    every ``generate`` call (seconds for 50k tokens); decoding a short tail per step is
    cheap, and no stop sequence spans more than ``window`` tokens.
    """

    def __init__(self, tok: Any, stops: Iterable[str], prompt_len: int, window: int = 16) -> None:
        self.tok, self.stops, self.start, self.window = tok, tuple(stops), prompt_len, window

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        tail = input_ids[:, self.start :][:, -self.window :]  # (batch, <= window)
        texts = self.tok.batch_decode(tail, skip_special_tokens=False)
        done = [any(s in t for s in self.stops) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class HFGenerator:
    """One model replica (a Ray actor: one per GPU, or CPU actors)."""

    def __init__(self, model_dir: str, gen: dict[str, Any], device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from phi_ray.runtime import pick_dtype
        from phi_ray.train.data import localize

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.gen = gen
        # An object-store model (an s3:// run's export): this node's one local copy of it.
        model_dir = localize(model_dir)
        try:
            self.tok = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError):  # a bare checkpoint: phi-ray's tokenizer
            from phi_ray.model.tokenizer import get_tokenizer

            self.tok = get_tokenizer()
        self.tok.padding_side = "left"  # generation continues from the right edge
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        dtype = pick_dtype("auto", self.device)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.model.to(self.device).eval()
        ctx = getattr(self.model.config, "max_position_embeddings", 2048)
        self.max_prompt = max(16, ctx - gen["max_new_tokens"])

    def generate(self, prompts: list[str], seed: int) -> list[str]:
        """Raw completions (not yet cut at stop sequences) for a batch of prompts."""
        import torch

        g = self.gen
        # Keep the end of over-long prompts: the signature and docstring are what matter.
        self.tok.truncation_side = "left"
        enc = self.tok(
            prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_prompt
        ).to(self.device)
        torch.manual_seed(seed)
        sample = g["temperature"] > 0
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                max_new_tokens=g["max_new_tokens"],
                do_sample=sample,
                temperature=g["temperature"] if sample else None,
                top_p=g["top_p"] if sample else None,
                top_k=None,
                pad_token_id=self.tok.pad_token_id,
                stopping_criteria=[_StopOnStrings(self.tok, g["stops"], enc["input_ids"].shape[1])],
            )
        new = out[:, enc["input_ids"].shape[1] :]  # (batch, generated)
        return self.tok.batch_decode(new, skip_special_tokens=True)


def _batches(problems: list[Problem], units: list[Unit], size: int) -> list[list[Unit]]:
    # Similar prompt lengths share a batch: less padding, fewer wasted steps.
    plen = {p.task_id: len(p.prompt) for p in problems}
    units = sorted(units, key=lambda u: (-plen[u[0]], u))
    return [units[i : i + size] for i in range(0, len(units), size)]


def generate_hf(
    model_dir: str,
    problems: list[Problem],
    ecfg: Any,
    seed: int,
    resume: ResumeLog,
) -> dict[Unit, dict[str, Any]]:
    """Completions from a checkpoint, batched and spread over Ray actors."""
    import ray
    from ray.util import ActorPool
    from tqdm.auto import tqdm

    units = _units(problems, ecfg.n_samples, set(resume.rows))
    if units:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        n_actors = ecfg.gen_actors or max(1, gpus)
        opts = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        gen = {
            "max_new_tokens": ecfg.max_new_tokens,
            "temperature": ecfg.temperature,
            "top_p": ecfg.top_p,
            "stops": STOP_SEQUENCES,
        }
        prompt = {p.task_id: p.prompt for p in problems}
        batches = _batches(problems, units, ecfg.batch_size)
        actor = ray.remote(**opts)(HFGenerator)
        actors = [actor.remote(model_dir, gen) for _ in range(min(n_actors, len(batches)))]
        pool = ActorPool(actors)

        def submit(a, b: tuple[int, list[Unit]]):
            return a.generate.remote([prompt[t] for t, _ in b[1]], seed + b[0])

        bar = tqdm(total=len(units), desc="generate", unit="sample")
        order = list(enumerate(batches))
        for (_, batch), raws in zip(order, pool.map(submit, order), strict=True):
            rows = [_row(u, r) for u, r in zip(batch, raws, strict=True)]
            resume.add(rows)
            bar.update(len(rows))
        bar.close()
        for a in actors:  # free the GPUs now, not when the handles are collected
            ray.kill(a)
    return resume.rows


def _row(unit: Unit, raw: str) -> dict[str, Any]:
    return {"task_id": unit[0], "sample": unit[1], "completion": truncate(raw), "raw": raw}


# --------------------------------------------------------------------------- endpoints


def endpoint_client(base_url: str, ecfg: Any) -> tuple[Any, str]:
    """An ``openai`` client for the endpoint and the model name to ask it for."""
    import openai

    key = os.environ.get(ecfg.endpoint_api_key_env) or "EMPTY"
    client = openai.OpenAI(base_url=base_url, api_key=key, timeout=ecfg.endpoint_timeout_s)
    model = ecfg.endpoint_model
    if not model:
        try:
            model = client.models.list().data[0].id
        except Exception as e:
            raise ConnectionError(
                f"evaluate.endpoint {base_url}: cannot list models ({type(e).__name__}: {e}); "
                "is the server up? set evaluate.endpoint_model to skip this call"
            ) from None
    return client, model


_MAX_EMPTY_ANSWERS = 3


def _choice_texts(resp: Any) -> list[str]:
    """The texts of a completion response's choices in index order; the client does not
    validate them, so a text that is not a string is an empty completion (a failed
    sample), never an exception out of the stage."""
    choices = [c for c in (getattr(resp, "choices", None) or []) if c is not None]
    choices.sort(key=lambda c: i if isinstance(i := getattr(c, "index", None), int) else 0)
    return [t if isinstance(t := getattr(c, "text", None), str) else "" for c in choices]


def api_stops(base_url: str) -> list[str]:
    """The stop sequences to send: all of them (phi-ray serve and vLLM take long lists),
    except to OpenAI's own API, which refuses more than 4; ``truncate`` applies the rest."""
    from urllib.parse import urlsplit

    host = (urlsplit(base_url).hostname or "").lower()
    if host == "api.openai.com" or host.endswith(".openai.com"):
        return list(STOP_SEQUENCES[:_OPENAI_MAX_STOPS])
    return list(STOP_SEQUENCES)


def generate_endpoint(
    base_url: str, problems: list[Problem], ecfg: Any, seed: int, resume: ResumeLog
) -> dict[Unit, dict[str, Any]]:
    """Completions from an OpenAI-compatible endpoint, with bounded concurrency."""
    from tqdm.auto import tqdm

    client, model = endpoint_client(base_url, ecfg)
    todo: dict[str, list[int]] = {}
    for t, i in _units(problems, ecfg.n_samples, set(resume.rows)):
        todo.setdefault(t, []).append(i)
    prompt = {p.task_id: p.prompt for p in problems}
    stops = api_stops(base_url)

    def one(task_id: str) -> list[dict[str, Any]]:
        idxs, texts, empty = todo[task_id], [], 0
        while len(texts) < len(idxs):  # servers may return fewer choices than n
            if empty == _MAX_EMPTY_ANSWERS:  # ...but one that returns none would loop forever
                raise ConnectionError(
                    f"evaluate.endpoint {base_url}: {empty} answers in a row for {task_id} "
                    "had no choices"
                )
            resp = client.completions.create(
                model=model,
                prompt=prompt[task_id],
                max_tokens=ecfg.max_new_tokens,
                temperature=ecfg.temperature,
                top_p=ecfg.top_p,
                n=len(idxs) - len(texts),
                stop=stops,
                seed=seed,
            )
            got = _choice_texts(resp)
            empty = 0 if got else empty + 1
            texts += got
        return [_row((task_id, i), raw) for i, raw in zip(idxs, texts, strict=False)]

    bar = tqdm(total=sum(map(len, todo.values())), desc="generate", unit="sample")
    with ThreadPoolExecutor(ecfg.endpoint_concurrency) as pool:
        for rows in pool.map(one, list(todo)):
            resume.add(rows)
            bar.update(len(rows))
    bar.close()
    return resume.rows
