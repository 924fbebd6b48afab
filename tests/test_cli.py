"""The `phi-ray` command as a user runs it: a real subprocess."""

import subprocess
import sys

from phi_ray.stages import COMMANDS, PIPELINE


def cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "phi_ray.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        **kw,
    )


def test_help_lists_every_stage():
    r = cli("--help")
    assert r.returncode == 0
    for s in PIPELINE + COMMANDS:
        assert s.name in r.stdout, s.name
    assert "config" in r.stdout and "run" in r.stdout


def test_config_show_phi1():
    r = cli("config", "show", "--preset", "phi1")
    assert r.returncode == 0
    assert "hidden_size: 2048" in r.stdout and "n_layer: 24" in r.stdout


def test_bad_key_is_one_line_error():
    r = cli("config", "show", "--preset", "tiny", "--set", "model.bogus=3")
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.count("\n") == 0 and "model.bogus" in err and "tiny.yaml" in err


def test_unknown_preset():
    r = cli("ingest", "--preset", "nope")
    assert r.returncode == 2 and "unknown preset 'nope'" in r.stderr
