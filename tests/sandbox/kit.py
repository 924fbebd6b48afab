"""Shared pieces of the sandbox attack suite: one problem, real listeners, a planted secret.

Not a ``conftest.py``: pytest imports every conftest as the module ``conftest``, so a second
one would shadow the root conftest that other test files import helpers from. The fixtures
are registered in ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import socket
import threading

from phi_ray.sandbox import Check, Limits, Sandbox, detect

PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
RIGHT = "    return a + b\n"
WRONG = "    return a - b\n"
LIMITS = Limits(timeout_s=3.0, memory_mb=256, max_procs=16, max_file_mb=4)
MODE = detect()


def job(completion: str) -> Check:
    return Check(PROMPT, completion, TEST, "add")


def sandbox_pool():
    """The strongest sandbox this host gives (the suite is written for ``strong``)."""
    with Sandbox(LIMITS, parallel=2, allow_weak=True) as sb:
        yield sb


def listener_server():
    """A real TCP server on 127.0.0.1 that records whether anyone connected."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    got: list[bytes] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            got.append(conn.recv(100))
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], got
    stop.set()
    t.join()
    srv.close()


def planted_secret():
    """A world-readable file in a world-readable directory outside the interpreter."""
    path = "/var/tmp/phi-ray-secret-" + os.urandom(4).hex()
    with open(path, "w") as f:
        f.write("TOP-SECRET")
    os.chmod(path, 0o644)
    yield path
    os.remove(path)
