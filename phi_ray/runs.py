"""Run directories: ``<root>/<run>/<stage>/`` with ``_SUCCESS.json``, written atomically.

A stage writes into ``<stage>.tmp-<id>/`` and only a finished stage is moved to
``<stage>/`` with its ``_SUCCESS.json``; a killed stage therefore never leaves output that
a later stage takes for complete. Work that must survive a crash (LLM response caches,
finished scoring shards) lives in ``<run>/.work/<stage>/`` and is reused by a rerun.

A stage is skipped when its hash matches its ``_SUCCESS.json``; the hash folds in its
config, each upstream stage's output fingerprint (:meth:`RunDir.output_fingerprint`) and,
for a stage that reads from outside the run, its inputs (:func:`tree_fingerprint`), so new
data anywhere upstream reruns everything that depends on it. A ``.tmp-`` directory that a
SIGKILL left behind is removed by the next run of its stage.

Paths are local or ``s3://`` / ``gs://`` URIs, through pyarrow filesystems. On object
stores there is no atomic rename: files are copied and ``_SUCCESS.json`` is written last,
so it remains the single commit marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pyarrow.fs as pafs

from phi_ray.config import check_run_name

SUCCESS = "_SUCCESS.json"
_VERSIONED = ("phi-ray", "ray", "torch", "transformers", "scikit-learn", "pyarrow", "openai")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        with suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or a URI pyarrow understands."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def tree_fingerprint(
    uri: str, suffixes: tuple[str, ...], skip_dirs: frozenset[str] = frozenset()
) -> str:
    """A fingerprint of the files under ``uri`` ending in ``suffixes``: their relative
    paths, sizes and modification times, hashed as they are listed; no file is opened.

    Locally the tree is walked one directory at a time in sorted order, so the cost is one
    ``stat`` per file and memory is one directory's entries, however large the tree
    (``skip_dirs``: directory names not descended into). On an object store it is pyarrow's
    recursive listing (size and last-modified per object; pyarrow exposes no ETag). A
    missing root has its own fingerprint; the reader reports it.
    """
    h = hashlib.sha256()
    fs, root = resolve_fs(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        if os.path.isfile(root):
            _hash_stat(h, os.path.basename(root), root)
        elif not os.path.isdir(root):
            h.update(b"missing")
        for d, dirs, names in os.walk(root):  # nothing for a file or a missing root
            dirs[:] = sorted(x for x in dirs if x not in skip_dirs)
            for n in sorted(names):
                if n.endswith(suffixes):
                    p = os.path.join(d, n)
                    _hash_stat(h, os.path.relpath(p, root), p)
        return h.hexdigest()[:16]
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        infos = [info]
    elif info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    else:
        infos = []
        h.update(b"missing")
    for i in sorted(infos, key=lambda i: i.path):
        if i.type == pafs.FileType.File and i.path.endswith(suffixes):
            mtime = i.mtime_ns if i.mtime_ns is not None else -1
            h.update(f"{i.path}\0{i.size}\0{mtime}\n".encode(errors="surrogateescape"))
    return h.hexdigest()[:16]


def files_fingerprint(*paths: str | None) -> str:
    """A fingerprint of input files or trees a config names only by path (a topic tree, a
    local MBPP file): a config hash sees the path, not the bytes, so an edited file would
    leave its stage "up to date". Each is :func:`tree_fingerprint` over every file (sizes
    and mtimes), resolved as the readers resolve it; None and "" are left out, and a name
    that is no path here (a hub id) fingerprints as missing."""
    from phi_ray.config import resolve_path

    parts = [f"{p}={tree_fingerprint(str(resolve_path(p)), ('',))}" for p in paths if p]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16] if parts else ""


def _hash_stat(h: Any, rel: str, path: str) -> None:
    try:
        st = os.stat(path)  # through a link: a changed target is a changed input
        line = f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n"
    except OSError:  # dangling link, vanished file: still part of the listing
        line = f"{rel}\0-1\n"
    h.update(line.encode(errors="surrogateescape"))


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])


@dataclass
class StageResult:
    """What a stage's ``run`` returns."""

    stage: str
    path: str
    skipped: bool = False
    success: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, Any]:
        return self.success.get("counts", {})


class RunDir:
    """One run: ``<root>/<name>``, local or on an object store."""

    def __init__(self, root: str, name: str) -> None:
        self.name = check_run_name(name)
        self.uri = _join(root, name) if "://" in root else os.path.join(os.path.abspath(root), name)
        self.fs, self.base = resolve_fs(self.uri)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.fs.create_dir(self.base, recursive=True)

    @classmethod
    def from_config(cls, cfg: Any) -> RunDir:
        return cls(cfg.run.root, cfg.run.name)

    # -- paths ------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """A path (local) or URI (object store) under the run, as Ray Data and pyarrow take."""
        if self.local:
            return os.path.join(self.base, *parts)
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{_join(self.base, *parts)}"

    def stage_path(self, stage: str) -> str:
        return self.path(stage)

    def work_path(self, stage: str) -> str:
        """Scratch that survives crashes (caches, finished shards); created on demand."""
        p = self.path(".work", stage)
        self.fs.create_dir(self._fs_path(p), recursive=True)
        return p

    def _fs_path(self, p: str) -> str:
        return p.split("://", 1)[1] if "://" in p else p

    # -- success markers ----------------------------------------------------------------
    def read_success(self, stage: str) -> dict[str, Any] | None:
        p = self._fs_path(self.path(stage, SUCCESS))
        try:
            with self.fs.open_input_stream(p) as f:
                return json.loads(f.read().decode())
        except (FileNotFoundError, OSError, json.JSONDecodeError):
            return None

    def is_complete(self, stage: str, config_hash: str | None = None) -> bool:
        s = self.read_success(stage)
        return s is not None and (config_hash is None or s.get("config_hash") == config_hash)

    def output_fingerprint(self, stage: str) -> str:
        """A fingerprint of a finished stage's output: the sha256 of its ``_SUCCESS.json``.

        The marker is written once per (re)run and carries its counts and timings, so a stage
        that ran again, even with an unchanged config over new data, gets a new fingerprint;
        a skipped stage leaves its marker untouched, so an unchanged rerun keeps it. ``-``
        when the stage has no readable marker.
        """
        try:
            with self.fs.open_input_stream(self._fs_path(self.path(stage, SUCCESS))) as f:
                return hashlib.sha256(f.read()).hexdigest()[:16]
        except (FileNotFoundError, OSError):
            return "-"

    def config_hash(
        self,
        cfg: Any,
        sections: tuple[str, ...],
        upstream: tuple[str, ...] = (),
        inputs: str = "",
    ) -> str:
        """The hash a stage records: its config sections, its upstream stages' outputs and,
        for a stage that reads outside the run (ingest), a fingerprint of those ``inputs``.

        Folding in the upstream *outputs* (not just their config hashes) makes any rerun
        upstream, a changed config or the same config over new data, rerun everything
        downstream of it, while an unchanged pipeline is skipped throughout.
        """
        parts = [cfg.section_hash(*sections)]
        parts += [f"{s}={self.output_fingerprint(s)}" for s in upstream]
        if inputs:
            parts.append(f"inputs={inputs}")
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def require(self, stage: str, needed_by: str) -> str:
        """The path of a finished upstream stage, or a clear error saying how to make it."""
        if not self.is_complete(stage):
            raise FileNotFoundError(
                f"{needed_by} needs the '{stage}' stage's output, but {self.stage_path(stage)} "
                f"is missing or unfinished; run `phi-ray {stage} --run {self.name}` first"
            )
        return self.stage_path(stage)

    def write_json(self, path: str, obj: Any) -> None:
        """Write JSON atomically (temp name, then rename) where the filesystem allows."""
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        p = self._fs_path(path)
        if self.local:
            tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        else:
            with self.fs.open_output_stream(p) as f:
                f.write(data)

    # -- writing a stage ------------------------------------------------------------------
    @contextmanager
    def stage(self, stage: str, config_hash: str, force: bool = False) -> Iterator[StageWriter]:
        """Write a stage's output atomically; skip when its ``_SUCCESS.json`` matches.

        >>> with run.stage("ingest", cfg.section_hash("corpus")) as out:
        ...     if out.skipped:
        ...         return out.result
        ...     write_files(out.tmp)
        ...     out.finish(counts={"files_out": n})
        """
        self._remove_leftovers(stage)
        writer = StageWriter(self, stage, config_hash)
        if not force and self.is_complete(stage, config_hash):
            writer.skipped = True
            writer.result = StageResult(
                stage, self.stage_path(stage), True, self.read_success(stage) or {}
            )
            yield writer
            return
        self.fs.create_dir(self._fs_path(writer.tmp), recursive=True)
        try:
            yield writer
        finally:
            if self.fs.get_file_info(self._fs_path(writer.tmp)).type != pafs.FileType.NotFound:
                self.fs.delete_dir(self._fs_path(writer.tmp))
        if writer.result is None:
            raise RuntimeError(f"stage {stage}: output block ended without finish()")

    def _remove_leftovers(self, stage: str) -> None:
        """Delete ``<stage>.tmp-*`` / ``<stage>.old-*`` left by a killed run of this stage.

        A SIGKILL skips the ``finally`` that removes them; nothing else ever reads them, and
        on an object store they would otherwise be paid for forever. (Two processes writing
        the same stage of the same run at once is unsupported anyway: the last finish wins.)
        """
        prefixes = (f"{stage}.tmp-", f"{stage}.old-")
        selector = pafs.FileSelector(self.base, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if info.base_name.startswith(prefixes) and info.type == pafs.FileType.Directory:
                with suppress(FileNotFoundError, OSError):
                    self.fs.delete_dir(info.path)


class StageWriter:
    """Handle for one stage being written; see :meth:`RunDir.stage`."""

    def __init__(self, run: RunDir, stage: str, config_hash: str) -> None:
        self.run = run
        self.name = stage
        self.config_hash = config_hash
        self.final = run.stage_path(stage)
        self.tmp = run.path(f"{stage}.tmp-{uuid.uuid4().hex[:8]}")
        self.started = time.time()
        self.skipped = False
        self.result: StageResult | None = None

    def finish(self, counts: dict[str, Any] | None = None, **extra: Any) -> StageResult:
        """Write ``_SUCCESS.json`` and move the output into place."""
        success = {
            "stage": self.name,
            "config_hash": self.config_hash,
            "started_at": self.started,
            "finished_at": time.time(),
            "duration_s": round(time.time() - self.started, 3),
            "counts": counts or {},
            "versions": package_versions(),
            **extra,
        }
        run, fs = self.run, self.run.fs
        final, tmp = run._fs_path(self.final), run._fs_path(self.tmp)
        if run.local:
            run.write_json(os.path.join(tmp, SUCCESS), success)
            old = f"{final}.old-{uuid.uuid4().hex[:8]}"
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            # Object stores: drop the old marker first, copy, then write the marker last.
            if fs.get_file_info(final).type != pafs.FileType.NotFound:
                fs.delete_dir(final)
            pafs.copy_files(tmp, final, source_filesystem=fs, destination_filesystem=fs)
            fs.delete_dir(tmp)
            run.write_json(run.path(self.name, SUCCESS), success)
        self.result = StageResult(self.name, self.final, False, success)
        return self.result
