"""A real S3-compatible endpoint for tests: moto's server mode on 127.0.0.1.

Everything that talks to it (pyarrow's S3 filesystem, Ray Train's storage, Ray workers
started after it) finds it through the standard AWS environment variables, the way a user
points phi-ray at MinIO or any other S3-compatible store: ``AWS_ENDPOINT_URL`` (honoured
by pyarrow >= 15 and by boto3), fixed test credentials, and a region so nothing asks EC2
metadata. :func:`s3_env` returns those variables; :class:`S3Server` starts and stops the
server process and creates buckets.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_env(endpoint: str) -> dict[str, str]:
    """The environment that sends every S3 client in a process tree to ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        # Neither boto3 nor Arrow may look for instance credentials (a 1 s timeout each).
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class S3Server:
    """``moto_server`` as a child process in its own process group (stopped with it)."""

    def __init__(self, log_path: str | Path | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = s3_env(self.endpoint)
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_up()

    def _wait_up(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).close()
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"moto_server did not answer on {self.endpoint}")

    def create_bucket(self, name: str) -> None:
        """A bucket, made through the S3 API itself (a PUT on the bucket's URL)."""
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        urllib.request.urlopen(req, timeout=10).close()

    @contextlib.contextmanager
    def env_applied(self) -> Iterator[None]:
        """Point this process (and Ray workers it starts meanwhile) at the server; the
        variables it set are put back as they were on exit."""
        saved = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
