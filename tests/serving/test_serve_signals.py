"""``phi-ray serve`` stops cleanly on Ctrl-C and on SIGTERM, however it was started.

A shell starts background jobs (``phi-ray serve ... &``, nohup, CI scripts) with SIGINT
ignored, and Python keeps an inherited SIG_IGN: Ctrl-C then did nothing and the process
had to be killed, leaving Serve and its Ray behind. SIGTERM is what Kubernetes, systemd
and ``kill`` send. A real subprocess, its own local Ray, real signals.
"""

from __future__ import annotations

import os
import signal
import subprocess

import httpx
import pytest

from phi_ray.config import load_config
from phi_ray.model.phi import build_model
from phi_ray.model.tokenizer import get_tokenizer
from tests.serving.kit import free_port, serve_command, serve_env, wait_health


def _ignore_sigint() -> None:  # what `cmd &` in a non-interactive shell does
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_serve_shuts_down_on_a_signal_even_with_sigint_ignored_by_its_parent(tmp_path, sig):
    model_dir = tmp_path / "model"
    build_model(load_config("tiny").model, seed=0).save_pretrained(model_dir)
    get_tokenizer().save_pretrained(model_dir)
    port = free_port()
    cmd = [*serve_command(model_dir, tmp_path, port), "--set", "run.num_cpus=2"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, env=serve_env(), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_ignore_sigint,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_health(proc, url, log_path)
        proc.send_signal(sig)  # the serve process itself, as Ctrl-C's or kill's target
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    assert "shutting down" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/health", timeout=5)
