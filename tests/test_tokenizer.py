"""The offline codegen-350M-mono tokenizer: pinned ids and exact round trips."""

from conftest import stdlib_python_files

from phi_ray.model.tokenizer import EOS_ID, VOCAB_SIZE, get_tokenizer


def test_size_and_special(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE == 50295
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == EOS_ID == 50256


def test_pinned_ids(tokenizer):
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert enc("Hello World") == [15496, 2159]  # GPT-2 BPE
    assert enc(" " * 31) == [50257] and enc("  ") == [50286]  # space runs 31..2
    assert enc("\t" * 9) == [50287] and enc("\t\t") == [50294]  # tab runs 9..2
    assert enc("    return x") == [50284, 7783, 2124]  # 4-space indent is one token
    assert enc(" " * 40) == [50257, 50279]  # 31 + 9 (50257 + 31 - 9), longest first
    assert enc("<|endoftext|>") == [50256]


def test_roundtrip_on_real_python(tokenizer):
    files = stdlib_python_files(300)
    assert len(files) >= 200
    n_tokens = 0
    for p in files:
        text = p.read_text(encoding="utf-8", errors="replace")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        n_tokens += len(ids)
        assert tokenizer.decode(ids) == text, p
    # whitespace runs make code cheaper than plain GPT-2 would
    assert n_tokens > 10_000


def test_batched_calls_and_cache(tokenizer, tmp_path, monkeypatch):
    out = tokenizer(["def f():\n    pass\n", "x = 1\n"], add_special_tokens=False)["input_ids"]
    assert out[1] == tokenizer("x = 1\n", add_special_tokens=False)["input_ids"]
    # a fresh cache directory builds and then reloads the same tokenizer
    monkeypatch.setenv("PHI_RAY_CACHE", str(tmp_path))
    get_tokenizer.cache_clear()
    try:
        built = get_tokenizer()
        assert any(tmp_path.rglob("tokenizer.json"))
        get_tokenizer.cache_clear()
        loaded = get_tokenizer()
        s = "class A:\n\t\tpass  # x\n"
        assert built(s)["input_ids"] == loaded(s)["input_ids"]
    finally:
        get_tokenizer.cache_clear()


def test_save_and_load_from_directory(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    again = get_tokenizer(str(tmp_path / "tok"))
    assert len(again) == VOCAB_SIZE
    assert again("    x")["input_ids"] == tokenizer("    x")["input_ids"]
