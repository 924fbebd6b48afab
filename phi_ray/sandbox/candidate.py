"""The untrusted side: load the program under test, then answer the judge's requests.

Runs in the candidate process, after the server has dropped its privileges and closed
every descriptor but the two request pipes. Nothing here is trusted by anyone: the code
under test can replace any of it (patch ``os.write``, walk frames, exit early). That is
why the judge treats every answer as untrusted data and keeps the verdict for itself.

Requests (frames from the judge) and answers:

* ``{"op": "call", "fn": name, "args": [...], "kwargs": {...}}`` -> ``{"ok": value}`` or
  ``{"err": exception}``: call a function the program defined (HumanEval / MBPP tests).
* ``{"op": "example", "ns": key, "src": source}`` -> ``{"out": text, "err": exception
  or null, "exc_line": last line of the formatted exception}``: run one doctest example
  in the namespace ``key`` (a copy of the module's globals, made on first use).
"""

from __future__ import annotations

import io
import sys
import traceback

from phi_ray.sandbox import wire

MAX_REQUEST = 64 << 20  # the judge's frames: arguments of a call, an example's source
MAX_OUT = 1 << 20  # captured stdout per example


class _BoundedIO(io.StringIO):
    """stdout for an example: keeps at most MAX_OUT characters."""

    def write(self, s: str) -> int:
        room = MAX_OUT - self.tell()
        if room > 0:
            super().write(s[:room])
        return len(s)


def _load(code: str, filename: str, module: bool) -> tuple[dict, dict | None]:
    if module:
        import types

        mod = types.ModuleType("solution")
        mod.__file__ = filename
        sys.modules["solution"] = mod
        ns = mod.__dict__
    else:
        ns = {}  # as the reference harness: exec(program, {})
    out, real = _BoundedIO(), sys.stdout
    sys.stdout = out
    try:
        exec(compile(code, filename, "exec"), ns)
    except BaseException as e:
        return ns, {**wire.encode_exception(e), "line": _exc_line(e)}
    finally:
        sys.stdout = real
    return ns, None


def _exc_line(e: BaseException) -> str:
    try:
        return traceback.format_exception_only(type(e), e)[-1][:2000]
    except BaseException:
        return f"{type(e).__name__}\n"


def _call(ns: dict, req: dict) -> dict:
    try:
        fn = ns[req["fn"]]
        args = wire.decode(req["args"])
        kwargs = wire.decode(req["kwargs"])
        return {"ok": wire.encode(fn(*args, **kwargs))}
    except BaseException as e:
        return {"err": wire.encode_exception(e)}


def _example(ns: dict, spaces: dict, req: dict) -> dict:
    glob = spaces.setdefault(req["ns"], dict(ns))
    out, real, hook = _BoundedIO(), sys.stdout, sys.displayhook
    sys.stdout = out
    sys.displayhook = sys.__displayhook__
    name, value = f"<doctest {req['ns']}>", None
    try:
        try:  # an expression: its value goes back as data, the judge prints it
            code, single = compile(req["src"], name, "eval"), False
        except SyntaxError:
            code, single = compile(req["src"], name, "exec"), True
        if single:
            exec(compile(req["src"], name, "single"), glob)
        else:
            value = _shown(eval(code, glob))
        err = None
    except BaseException as e:
        err = {**wire.encode_exception(e), "line": _exc_line(e)}
    finally:
        sys.stdout, sys.displayhook = real, hook
    return {"out": out.getvalue(), "err": err, **(value or {})}


def _shown(v: object) -> dict | None:
    """How an expression's value is shown: as data when it is plain (the judge then
    writes its repr itself), else as this process's repr text."""
    if v is None:
        return None
    if not hasattr(v, "__next__"):
        try:
            return {"value": wire.encode(v)}
        except TypeError:
            pass
    return {"repr": repr(v)[:MAX_OUT]}


def serve(rfd: int, wfd: int, code: str, filename: str, module: bool) -> None:
    """Load ``code``, report how that went, then answer requests until the judge hangs up."""
    ns, err = _load(code, filename, module)
    wire.send(wfd, {"loaded": err is None, "err": err})
    spaces: dict = {}
    while True:
        try:
            req = wire.recv(rfd, MAX_REQUEST)
        except wire.WireError:
            return
        if req.get("op") == "call":
            ans = _call(ns, req)
        elif req.get("op") == "example":
            ans = _example(ns, spaces, req)
        else:
            ans = {"err": {"name": "RuntimeError", "msg": "unknown request"}}
        try:
            wire.send(wfd, ans)
        except (TypeError, ValueError) as e:  # an unencodable answer (e.g. a lone surrogate)
            wire.send(wfd, {"err": wire.encode_exception(e)})
