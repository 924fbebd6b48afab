"""The trusted side: run the tests and decide the verdict, outside the untrusted process.

The judge is forked by the server, as an identity of its own (another uid as root,
non-dumpable everywhere: the candidate can neither ptrace it nor open its ``/proc``
files). It holds the benchmark's tests, which never enter the candidate's memory, and
talks to the candidate only through :mod:`wire`: it sends arguments and example sources
and gets back plain data. Assertions run here, on values decoded here, so nothing the
program under test does in its own process (patched ``os.write``, frame walking,
``os._exit(0)``, ``SystemExit``, a fake "passed" print, objects whose ``__eq__`` is
always true, redefining the prompt's helpers) can turn a wrong answer into a pass.

Job kinds:

* ``check``: HumanEval format. The judge executes the *problem's* prompt and test (the
  trusted parts), binds the entry point to a proxy that calls the candidate's function,
  and calls ``check``. Passed iff ``check`` returns.
* ``doctest``: the doctest examples in the code's docstrings (found by parsing, not by
  importing) and any ``>>>`` sessions, each example sent to the candidate and its output
  compared here with ``doctest.OutputChecker``.
* ``script``: a self-checking program; passed iff it runs to its end. Its verdict comes
  from the program's own process, so it is *not* forgery-proof: for trusted programs
  (tests, probes) only.
"""

from __future__ import annotations

import ast
import builtins

from phi_ray.sandbox import wire

MAX_ANSWER = 16 << 20  # one answer from the candidate (a return value, an example's output)


class CandidateGone(BaseException):
    """The candidate closed its pipe, died, or broke the protocol."""


class _Channel:
    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd, self.broken = rfd, wfd, False

    def ask(self, req: dict) -> dict:
        if self.broken:
            raise CandidateGone("the candidate stopped answering")
        try:
            wire.send(self.wfd, req)
            ans = wire.recv(self.rfd, MAX_ANSWER)
        except (OSError, wire.WireError) as e:
            self.broken = True
            raise CandidateGone(f"the candidate stopped answering ({e})") from None
        if not isinstance(ans, dict):
            self.broken = True
            raise CandidateGone("the candidate broke the protocol")
        return ans


class _Remote:
    """The candidate's function, as the tests see it: plain data in, plain data out."""

    def __init__(self, chan: _Channel, name: str) -> None:
        self.chan, self.__name__ = chan, name

    def __call__(self, *args: object, **kwargs: object) -> object:
        req = {"op": "call", "fn": self.__name__}
        req["args"], req["kwargs"] = wire.encode(list(args)), wire.encode(dict(kwargs))
        ans = self.chan.ask(req)
        if "ok" in ans:
            try:
                return wire.decode(ans["ok"])
            except wire.WireError as e:
                raise TypeError(f"the candidate returned {e}") from None
        raise wire.decode_exception(ans.get("err"))


def _failed(e: BaseException) -> str:
    try:
        msg = f"failed: {type(e).__name__}: {e}"
    except BaseException:
        msg = f"failed: {type(e).__name__}"
    return msg.replace("\n", " ")[:400]


def _load_error(loaded: dict) -> str:
    err = loaded.get("err") or {}
    return f"failed: {str(err.get('name'))[:100]}: {str(err.get('msg'))[:300]}".replace("\n", " ")


def _prompt_code(prompt: str) -> object:
    """The prompt's definitions (helpers the tests use, imports), compiled on their own:
    a prompt that ends in a bare signature gets a placeholder body."""
    for src in (prompt, prompt + "    pass\n", prompt.rstrip() + "\n    pass\n"):
        try:
            return compile(src, "<prompt>", "exec")
        except SyntaxError:
            continue
    return compile("", "<prompt>", "exec")


def _free_names(test: str, g: dict) -> set[str]:
    """Names the test reads that neither the problem nor the builtins define."""
    tree = ast.parse(test)
    bound = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)
    }
    bound |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    bound |= {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    loads = {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    return loads - bound - set(g) - set(dir(builtins))


def _check(chan: _Channel, job: dict, loaded: dict) -> dict:
    if not loaded.get("loaded"):
        return {"passed": False, "result": _load_error(loaded)}
    g: dict = {}
    exec(_prompt_code(job["prompt"]), g)
    exec(compile(job["test"], "<test>", "exec"), g)
    proxy = _Remote(chan, job["entry_point"])
    g[job["entry_point"]] = proxy
    for name in _free_names(job["test"], g):  # other functions of the completion (MBPP)
        g[name] = _Remote(chan, name)
    try:
        g["check"](proxy)
    except CandidateGone:
        raise
    except BaseException as e:
        return {"passed": False, "result": _failed(e)}
    if chan.broken:  # a test swallowed the candidate's death: still not a pass
        raise CandidateGone("the candidate stopped answering")
    return {"passed": True, "result": "passed"}


def _script(chan: _Channel, job: dict, loaded: dict) -> dict:
    if not loaded.get("loaded"):
        return {"passed": False, "result": _load_error(loaded)}
    return {"passed": True, "result": "passed"}


# --------------------------------------------------------------------------- doctest


def _docstrings(code: str) -> list[tuple[str, str]]:
    """(name, docstring) of the module and its top-level functions and classes (methods
    too), as ``doctest.DocTestFinder`` finds them, but from the source: nothing runs."""
    tree = ast.parse(code)
    out = []

    def visit(node: ast.AST, name: str) -> None:
        doc = ast.get_docstring(node, clean=False)  # type: ignore[arg-type]
        if doc:
            out.append((name, doc))
        for child in getattr(node, "body", []):
            defines = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            if defines and isinstance(node, ast.Module | ast.ClassDef):
                visit(child, f"{name}.{child.name}")

    visit(tree, "solution")
    return out


def _doctest(chan: _Channel, job: dict, loaded: dict) -> dict:
    import doctest  # the server preloads it before forking a doctest job's judge

    parser, checker = doctest.DocTestParser(), doctest.OutputChecker()
    base = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    try:
        sources = _docstrings(job["code"])
        sources += [(f"session{i}", s) for i, s in enumerate(job["sessions"])]
        tests = [(name, parser.get_examples(doc, name)) for name, doc in sources]
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        return {"status": "error", "detail": _failed(e)}
    if not loaded.get("loaded"):
        return {"status": "error", "detail": _load_error(loaded)}
    if not any(examples for _, examples in tests):
        return {"status": "no_examples"}
    attempted = failed = 0
    report: list[str] = []
    for name, examples in tests:
        for ex in examples:
            flags = base
            for flag, on in ex.options.items():
                flags = flags | flag if on else flags & ~flag
            if flags & doctest.SKIP:
                continue
            attempted += 1
            ans = chan.ask({"op": "example", "ns": name, "src": ex.source})
            got, err = str(ans.get("out", ""))[: 1 << 20], ans.get("err")
            if err is None and "value" in ans:  # plain data: printed here, not there
                try:
                    got += repr(wire.decode(ans["value"])) + "\n"
                except wire.WireError:
                    got += "<malformed value>\n"
            elif err is None and "repr" in ans:
                got += str(ans["repr"])[: 1 << 20] + "\n"
            if err is None:
                ok = checker.check_output(ex.want, got, flags)
            else:
                line = str(err.get("line", "")) if isinstance(err, dict) else ""
                ok = ex.exc_msg is not None and checker.check_output(ex.exc_msg, line, flags)
                got += line
            if not ok:
                failed += 1
                report.append(f"{name}: {ex.source.strip()[:200]} -> {got.strip()[:200]}")
    status = "failed" if failed else "passed"
    return {
        "status": status,
        "attempted": attempted,
        "failed": failed,
        "detail": "\n".join(report)[-500:],
    }


KINDS = {"check": _check, "doctest": _doctest, "script": _script}


def judge(rfd: int, wfd: int, job: dict) -> dict:
    """The verdict on one job; never raises."""
    chan = _Channel(rfd, wfd)
    try:
        loaded = wire.recv(rfd, MAX_ANSWER)
        if not isinstance(loaded, dict):
            raise CandidateGone("the candidate broke the protocol")
        return KINDS[job["kind"]](chan, job, loaded)
    except (CandidateGone, wire.WireError, OSError) as e:
        return {"passed": False, "gone": True, "result": f"failed: {str(e)[:300]}"}
    except BaseException as e:
        return {"passed": False, "harness": True, "result": "failed: harness error " + _failed(e)}
