import itertools

import pytest

from phi_ray.config import Config, ConfigError, list_presets, load_config


def test_presets_load():
    assert {"tiny", "phi1", "phi1-small"} <= set(list_presets())
    for p in ("tiny", "phi1", "phi1-small"):
        assert isinstance(load_config(p), Config)


def test_phi1_carries_the_papers_numbers():
    c = load_config("phi1")
    m = c.model
    assert (m.n_layer, m.hidden_size, m.intermediate_size, m.n_head, m.rotary_dim) == (
        24,
        2048,
        8192,
        32,
        32,
    )
    assert c.pack.seq_len == 2048
    assert m.attention_dropout == m.resid_dropout == 0.1
    p = c.pretrain
    assert (p.global_batch, p.lr, p.warmup_steps, p.weight_decay, p.max_steps, p.precision) == (
        1024,
        1e-3,
        750,
        0.1,
        36000,
        "fp16",
    )
    f = c.finetune
    assert (f.global_batch, f.lr, f.warmup_steps, f.weight_decay, f.max_steps) == (
        256,
        1e-4,
        50,
        0.01,
        6000,
    )
    assert f.checkpoint_every == 1000 and f.keep_best
    assert c.annotate.sample_size == 100_000


def test_phi1_small_extends_phi1():
    c = load_config("phi1-small")
    m = c.model
    assert (m.n_layer, m.hidden_size, m.intermediate_size, m.n_head) == (20, 1024, 4096, 16)
    assert c.pretrain.lr == 1e-3 and c.finetune.global_batch == 256  # inherited


def test_overrides_and_types():
    c = load_config("tiny", ["pretrain.lr=0.01", "model.n_layer=3", "corpus.dedup.near=false"])
    assert c.pretrain.lr == 0.01 and c.model.n_layer == 3 and c.corpus.dedup.near is False
    # a partial nested section keeps the section's own defaults
    assert c.finetune.keep_best is True


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.bogus=1", "unknown key model.bogus"),
        ("nosuch.key=1", "unknown key nosuch"),
        ("pretrain.lr=-1", "pretrain.lr: must be > 0"),
        ("pretrain.lr=abc", "pretrain.lr: expected a number"),
        ("model.n_layer=2.5", "model.n_layer: expected an integer"),
        ("pack.seq_len=4096", "pack.seq_len: 4096 exceeds the model's context"),
        ("pretrain.precision=fp8", "pretrain.precision: must be one of"),
        ("corpus.sources=[{kind: local_dir}]", "corpus.sources[0].path: required"),
    ],
)
def test_bad_values_name_key_and_file(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    msg = str(e.value)
    assert needle in msg and "tiny.yaml" in msg and "\n" not in msg


def test_bad_preset_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_layers: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key model.n_layers"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("nope")


def test_section_hash_is_stable_and_sensitive():
    a, b = load_config("tiny"), load_config("tiny")
    assert a.section_hash("corpus") == b.section_hash("corpus")
    c = load_config("tiny", ["corpus.filters.min_chars=5"])
    assert a.section_hash("corpus") != c.section_hash("corpus")
    assert a.section_hash("model") == c.section_hash("model")


def test_float_keys_accept_yaml11_exponents():
    # PyYAML reads 2.0e6 (no sign in the exponent) as a string
    c = load_config("tiny", ["estimate.corpus_tokens=2.0e6", "pretrain.lr=3e-4"])
    assert c.estimate.corpus_tokens == 2e6 and c.pretrain.lr == 3e-4
    with pytest.raises(ConfigError, match="expected a number"):
        load_config("tiny", ["pretrain.lr=fast"])


# --------------------------------------------------------------------------- hostile input

BOMB = (  # "billion laughs": under 400 bytes, 9**9 leaves once its aliases are expanded
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n"
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n"
    "i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n"
    "model: {n_layer: *i}\n"
)


def _flow_bomb(levels: int = 8) -> str:
    """The same attack as one flow sequence, as a `--set` value would carry it."""
    items = ["&a [x,x,x,x,x,x,x,x,x,x]"]
    for prev, cur in itertools.pairwise("abcdefghij"[:levels]):
        items.append(f"&{cur} [{', '.join([f'*{prev}'] * 10)}]")
    return "[" + ", ".join(items) + "]"


def test_yaml_alias_bomb_is_refused_fast(tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: more than .* YAML nodes"):
        load_config(str(bomb))
    with pytest.raises(ConfigError, match=r"--set evaluate\.benchmarks: more than"):
        load_config("tiny", [f"evaluate.benchmarks={_flow_bomb()}"])
    assert time.perf_counter() - t0 < 1.0
    (tmp_path / "rec.yaml").write_text("model: &m {n_layer: *m}\n")
    with pytest.raises(ConfigError, match="alias refers to a node that contains it"):
        load_config(str(tmp_path / "rec.yaml"))
    (tmp_path / "deep.yaml").write_text("model: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: YAML nested more than 100 deep"):
        load_config(str(tmp_path / "deep.yaml"))


def test_ordinary_anchors_still_work(tmp_path):
    p = tmp_path / "anchors.yaml"
    p.write_text("extends: tiny\npretrain: &t {lr: 0.002, max_steps: 7}\nfinetune: *t\n")
    c = load_config(str(p))
    assert c.pretrain.lr == c.finetune.lr == 0.002 and c.finetune.max_steps == 7


def test_extends_cycle_names_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nmodel: {n_layer: 1}\n")
    (tmp_path / "b.yaml").write_text("extends: c.yaml\n")
    (tmp_path / "c.yaml").write_text(f"extends: {tmp_path / 'a.yaml'}\n")
    with pytest.raises(ConfigError, match="extends cycle") as e:
        load_config(str(tmp_path / "a.yaml"))
    assert all(f"{n}.yaml" in str(e.value) for n in "abc")
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    with pytest.raises(ConfigError, match=r"extends cycle: .*self.yaml -> .*self.yaml"):
        load_config(str(tmp_path / "self.yaml"))
    # a diamond is not a cycle, and a relative parent is found beside its child
    (tmp_path / "base.yaml").write_text("extends: tiny\nmodel: {n_layer: 3}\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\n")
    assert load_config(str(tmp_path / "mid.yaml")).model.n_layer == 3


@pytest.mark.parametrize(
    "override, attr, want",
    [
        # str fields keep the text as it is: no YAML guessing, no comments
        ("run.name=2024", "run.name", "2024"),
        ("run.name=on", "run.name", "on"),
        ("run.root=~", "run.root", "~"),
        ("run.root=null", "run.root", "null"),  # run.root cannot be None: a plain string
        ("synth.model=a #b", "synth.model", "a #b"),
        ("synth.model=~", "synth.model", "~"),
        ("synth.model=1.5", "synth.model", "1.5"),
        ("synth.model=null", "synth.model", None),  # str | None: null means None
        ("evaluate.limit=null", "evaluate.limit", None),
        ("evaluate.limit=7", "evaluate.limit", 7),
        ("corpus.dedup.near=on", "corpus.dedup.near", True),
        ("corpus.dedup.near=False", "corpus.dedup.near", False),
        ("pretrain.lr=1e-3", "pretrain.lr", 1e-3),
        ("llm.budget_usd=12", "llm.budget_usd", 12.0),
        ("synth.kinds=[textbooks]", "synth.kinds", ["textbooks"]),
        (
            "decontam.allow_list=[2024, on, '#x']",
            "decontam.allow_list",
            ["2024", "on", "#x"],
        ),
    ],
)
def test_set_values_follow_the_target_fields_type(override, attr, want):
    c = load_config("tiny", [override])
    got = c
    for part in attr.split("."):
        got = getattr(got, part)
    assert got == want and type(got) is type(want)


def test_set_nested_sections_are_typed_by_their_fields():
    c = load_config(
        "tiny", ["corpus.sources=[{kind: local_dir, path: 2024, name: on, max_files: 3}]"]
    )
    s = c.corpus.sources[0]
    assert (s.path, s.name, s.max_files) == ("2024", "on", 3)
    c = load_config("tiny", ["llm.prices={m1: {input: 1, output: 2.5}}"])
    assert c.llm.prices["m1"] == {"input": 1.0, "output": 2.5}


@pytest.mark.parametrize(
    "override, needle",
    [
        ("evaluate.limit=lots", "evaluate.limit: expected an integer, got 'lots'"),
        ("corpus.dedup.near=maybe", "corpus.dedup.near: expected true/false, got 'maybe'"),
        ("pretrain.lr=nan", "pretrain.lr: expected a number, got 'nan'"),
        ("pretrain.max_steps=1e3", "pretrain.max_steps: expected an integer, got '1e3'"),
        ("corpus.sources=[{kind: stdlib, max_files: x}]", "corpus.sources[0].max_files: expected"),
        ("llm.prices={m: {input: cheap}}", "llm.prices.m.input: expected a number"),
        ("synth.kinds=[textbooks", "--set synth.kinds: not valid YAML"),
    ],
)
def test_set_garbage_is_rejected_naming_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert needle in str(e.value) and "\n" not in str(e.value)
