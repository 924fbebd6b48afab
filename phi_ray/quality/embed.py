"""CodeGen embeddings of code files: the features of the phi-1 quality classifier.

The paper embeds each file with a pretrained CodeGen model and trains a random forest on
the output embedding. :class:`Embedder` loads any Hugging Face model (hub id or local
directory; ``Salesforce/codegen-350M-mono`` by default) and pools its last layer's hidden
states over the file's tokens. ``model: tiny-codegen`` builds a small, seeded
``CodeGenModel`` from the config's ``tiny_*`` fields instead, with the real codegen
tokenizer, through the same code path (the tiny preset and the tests use it).

Policies (documented here because the classifier's meta records them):

- **Truncation**: a file is embedded from its first ``max_length`` tokens (the head is
  kept; the imports, docstrings and first definitions are what a reader sees first).
  Texts are cut to a character prefix before tokenizing so a 100 kB file costs no more to
  tokenize than a short one: first ``8 * max_length`` characters, and when that yields
  fewer than ``max_length + 64`` tokens, ``66 * max_length`` (no codegen token is longer
  than 66 characters, so the head tokens are unchanged).
- **Empty text**: a text with no tokens is embedded as the lone ``<|endoftext|>`` token,
  so every input gets a finite vector.
- **Pooling**: ``mean`` over non-pad tokens (default), ``last`` (the last real token,
  which in a causal model has seen the whole file) or ``max`` over non-pad tokens.
- **Batching**: rows are sorted by token length (longest first, so memory peaks on the
  first batch) and cut into batches by a token budget: as many rows as fit
  ``batch_tokens`` (default ``batch_size x max_length``) at the batch's padded width, so
  short files fill the device as long ones do; right-padded; results in input order.
- **Attention**: ``scaled_dot_product_attention`` in the model dtype (flash / memory-
  efficient kernels on GPUs; ``attn_implementation: sdpa``). transformers' eager CodeGen
  attention casts q and k to fp32 and materialises the (B, heads, T, T) fp32 scores
  (4 GiB per layer at batch 64 x 1024 tokens); it stays available as ``eager``, the
  reference the tests check against.
- **Precision**: bf16 (fp16 where bf16 is missing) on GPUs, fp32 on CPUs.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from phi_ray.config import EmbedderConfig
from phi_ray.runtime import pick_dtype

TINY = "tiny-codegen"
MAX_TOKEN_CHARS = 66  # the longest codegen token, in characters
_SLACK_TOKENS = 64


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str) -> Any:
    """The tokenizer for an embedder model: the offline codegen one for ``tiny-codegen``."""
    from phi_ray.model.tokenizer import get_tokenizer

    return get_tokenizer(None if model == TINY else model)


def _attn(cfg: EmbedderConfig, cls: Any) -> str:
    """The configured attention where the model class has it (transformers 4.x CodeGen has
    no SDPA path), else eager."""
    want = cfg.attn_implementation
    if want == "sdpa" and not getattr(cls, "_supports_sdpa", False):
        return "eager"
    if want == "flash_attention_2" and not getattr(cls, "_supports_flash_attn", False):
        return "eager"
    return want


def _tiny_codegen(cfg: EmbedderConfig, vocab_size: int, seed: int) -> torch.nn.Module:
    """A small, randomly initialised ``CodeGenModel``; same seed -> same weights."""
    from transformers import CodeGenConfig, CodeGenModel

    head_dim = cfg.tiny_hidden // cfg.tiny_heads
    conf = CodeGenConfig(
        vocab_size=vocab_size,
        n_positions=cfg.max_length,
        n_ctx=cfg.max_length,
        n_embd=cfg.tiny_hidden,
        n_layer=cfg.tiny_layers,
        n_head=cfg.tiny_heads,
        rotary_dim=max(2, head_dim // 2),  # codegen-350M: head_dim 64, rotary 32
        activation_function=FUSED_GELU,  # codegen's gelu_new, in one kernel (see below)
        use_cache=False,
    )
    conf._attn_implementation = _attn(cfg, CodeGenModel)
    # fork_rng: seeding must not disturb the caller's global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CodeGenModel(conf)


def _load_model(cfg: EmbedderConfig, vocab_size: int, dtype: torch.dtype, seed: int):
    """(model, takes_hidden_states): a base model, or a causal LM read via hidden states."""
    if cfg.model == TINY:
        return _tiny_codegen(cfg, vocab_size, seed).to(dtype), False
    from transformers import AutoModel, AutoModelForCausalLM

    for auto, via_lm in ((AutoModel, False), (AutoModelForCausalLM, True)):
        try:
            return _from_pretrained(auto, cfg, dtype), via_lm
        except ValueError:  # an architecture with no base-model class registered
            if via_lm:
                raise
    raise AssertionError("unreachable")


# CodeGen's MLP activation is transformers' ``gelu_new``: the tanh-approximate GELU written
# as eight elementwise ops over the 4x-wide MLP tensor, each a pass over memory (on CPU they
# cost more than the MLP's matmuls at small widths). ``gelu_pytorch_tanh`` is the same
# function as one kernel (equal to 1e-15 in fp64, 5e-7 in fp32): the same vectors, so a
# classifier trained either way stays valid.
FUSED_GELU = "gelu_pytorch_tanh"


def _fused_gelu_kwargs(model: str) -> dict[str, Any]:
    from transformers import AutoConfig

    try:
        conf = AutoConfig.from_pretrained(model)
    except (OSError, ValueError):  # let from_pretrained raise its own error
        return {}
    gelu_new = getattr(conf, "activation_function", None) == "gelu_new"
    return {"activation_function": FUSED_GELU} if gelu_new else {}


def _from_pretrained(auto: Any, cfg: EmbedderConfig, dtype: torch.dtype):
    kw = _fused_gelu_kwargs(cfg.model)
    try:
        return auto.from_pretrained(
            cfg.model, dtype=dtype, attn_implementation=cfg.attn_implementation, **kw
        )
    except (ValueError, ImportError) as e:  # this class has no such attention: eager
        if "attn" not in str(e).lower() and "attention" not in str(e).lower():
            raise
        return auto.from_pretrained(cfg.model, dtype=dtype, attn_implementation="eager", **kw)


def _digest(model: torch.nn.Module) -> str:
    """A cheap weights fingerprint: a few values of every tensor, rounded to bf16.

    bf16 rounding makes an fp32 CPU copy and a bf16 GPU copy of the same weights agree.
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        head = p.detach().flatten()[:64].to("cpu", torch.bfloat16).view(torch.int16)
        h.update(name.encode())
        h.update(head.numpy().tobytes())
    return h.hexdigest()[:16]


def tokenize_head(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """The first ``max_length`` token ids of each text; ``[<|endoftext|>]`` for an empty one.

    Texts are cut to a character prefix first (see the module docstring) so that long
    files cost no more than short ones.
    """
    n = max_length
    ids = _encode(tokenizer, [t[: 8 * n] for t in texts])
    redo = [i for i, t in enumerate(texts) if len(t) > 8 * n and len(ids[i]) < n + _SLACK_TOKENS]
    longer = _encode(tokenizer, [texts[i][: MAX_TOKEN_CHARS * n] for i in redo])
    for i, row in zip(redo, longer, strict=True):
        ids[i] = row
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return [row[:n] if row else [eos] for row in ids]


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return [list(x) for x in enc["input_ids"]]


class Embedder:
    """Embeds code files with a (CodeGen) transformer; see the module docstring.

    ``embed(texts)`` returns an ``(n, dim)`` float32 array in input order.
    """

    def __init__(self, embedder_cfg: EmbedderConfig, device: str = "cpu", seed: int = 0) -> None:
        self.cfg = embedder_cfg
        self.device = device
        self.seed = seed
        self.tokenizer = load_tokenizer(embedder_cfg.model)
        eos = self.tokenizer.eos_token_id
        self.eos_id = eos if eos is not None else 0  # pads too: padding is masked out
        self.dtype = pick_dtype("auto", device)
        model, self._via_lm = _load_model(embedder_cfg, len(self.tokenizer), self.dtype, seed)
        self.model = model.to(device).eval()
        self.dim = int(self.model.config.hidden_size)
        self._identity: dict[str, Any] | None = None

    # -- identity -------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What makes two embedders' vectors comparable; the classifier's meta stores it."""
        if self._identity is None:
            c = self.cfg
            ident: dict[str, Any] = {
                "model": c.model,
                "pooling": c.pooling,
                "max_length": c.max_length,
                "dim": self.dim,
                "weights": _digest(self.model),
            }
            if c.model == TINY:
                ident |= {"layers": c.tiny_layers, "hidden": c.tiny_hidden, "heads": c.tiny_heads}
                ident["seed"] = self.seed
            self._identity = ident
        return dict(self._identity)

    def num_parameters(self, non_embedding: bool = True) -> int:
        """Parameters touched per token (the token-embedding table is a lookup, not FLOPs)."""
        n = sum(p.numel() for p in self.model.parameters())
        if non_embedding:
            n -= self.model.get_input_embeddings().weight.numel()
        return n

    # -- tokens -----------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text's head, at most ``max_length`` long, never empty."""
        return tokenize_head(self.tokenizer, texts, self.cfg.max_length)

    # -- embeddings -------------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), dim)`` float32 embeddings, in input order."""
        return self.embed_tokens(self.tokenize(list(texts)))

    @torch.inference_mode()
    def embed_tokens(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings of already tokenized rows (e.g. from a CPU tokenizing stage)."""
        out = np.empty((len(token_ids), self.dim), dtype=np.float32)
        if not token_ids:
            return out
        rows = [list(r[: self.cfg.max_length]) or [self.eos_id] for r in token_ids]
        for idx in token_batches([len(r) for r in rows], self.token_budget):
            out[idx] = self._embed_batch([rows[i] for i in idx])
        return out

    @property
    def token_budget(self) -> int:
        return self.cfg.batch_tokens or self.cfg.batch_size * self.cfg.max_length

    def _embed_batch(self, rows: list[list[int]]) -> np.ndarray:
        width = len(rows[0])  # rows arrive longest first
        ids = torch.full((len(rows), width), self.eos_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: position ids stay 0..len-1
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self._via_lm:
            h = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            hidden = h.hidden_states[-1]
        else:
            hidden = self.model(input_ids=ids, attention_mask=mask, use_cache=False)[0]
        return _pool(hidden.float(), mask, self.cfg.pooling).cpu().numpy()


def token_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Row indices, longest first, cut so each batch's ``rows x padded width <= budget``.

    A row longer than the budget still gets a batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # the first row is the widest
        if cur and (len(cur) + 1) * width > budget:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def _pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(b, t, d) hidden states + (b, t) mask -> (b, d)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    if how == "max":
        return hidden.masked_fill(m == 0, float("-inf")).amax(1)
    last = mask.sum(1) - 1  # (b,) index of each row's last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
