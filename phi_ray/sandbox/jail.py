"""Kernel plumbing for the server and its children (standard library + ctypes only).

* :func:`build_view`: the filesystem a program sees, built once per server inside its
  own mount namespace: a read-only tmpfs root holding read-only binds of only what the
  interpreter needs (``/usr`` and the interpreter's prefix, with every ``site-packages``
  hidden), a few ``/dev`` nodes, a ``/proc`` of the server's own PID namespace mounted
  ``hidepid=invisible`` (a program sees its own processes only), and tmpfs ``/tmp``,
  ``/var/tmp``, ``/dev/shm``. The host's root is then pivoted away and detached: host
  files, ``/tmp/ray``, ``docker.sock`` and other filesystem sockets are not there at all.
* :func:`reset_tmp`: fresh tmpfs ``/tmp``, ``/var/tmp``, ``/dev/shm`` before every sample.
* :func:`landlock`: where namespaces are unavailable, restricts a process to reading a
  few directories and forbids it to signal anything outside its own sandbox.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 4, 38, 36
CLONE_NEWUSER, CLONE_NEWIPC = 0x10000000, 0x08000000
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_SYS_LANDLOCK = (444, 445, 446)  # create_ruleset, add_rule, restrict_self (all arches)
TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_DEVICES = ("null", "zero", "full", "random", "urandom")

_libc = None


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _ok(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def mount(src: str, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _ok(
        libc().mount(
            src.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def umount(target: str) -> None:
    _ok(libc().umount2(target.encode(), MNT_DETACH), f"umount {target}")


def prctl(option: int, arg: int) -> None:
    _ok(libc().prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl {option}")


def _bind_ro(src: str, dst: str, nodev: bool = True) -> None:
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        open(dst, "a").close()
    mount(src, dst, None, MS_BIND | MS_REC)
    flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | (MS_NODEV if nodev else 0)
    mount("none", dst, None, flags)


def _hidden(prefixes: list[str]) -> list[str]:
    """site-packages / dist-packages under the bound trees: third-party code and data
    files (HumanEval's own answers ship in a package) stay out of the view."""
    out = []
    for pre in prefixes:
        for base in (pre, os.path.join(pre, "local")):
            lib = os.path.join(base, "lib")
            if not os.path.isdir(lib):
                continue
            for d in os.listdir(lib):
                if d.startswith("python"):
                    out += [os.path.join(lib, d, s) for s in ("site-packages", "dist-packages")]
    return [p for p in out if os.path.isdir(p)]


def tmpfs(target: str, size_mb: int, mode: str = "1777") -> None:
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,mode={mode}")


def build_view(root: str, trees: list[str], tmp_mb: int) -> None:
    """Make ``root`` the filesystem root of this mount namespace (see the module doc)."""
    tmpfs(root, 8, "0755")
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/sbin", "/libx32"):
        if os.path.islink(top):
            os.symlink(os.readlink(top), root + top)
        elif os.path.isdir(top):
            trees = [*trees, top]
    trees = sorted({os.path.realpath(t) for t in trees if os.path.isdir(t)})
    trees = [t for t in trees if not any(t.startswith(o + "/") for o in trees)]
    for t in trees:
        _bind_ro(t, root + t)
    for h in _hidden(trees):
        mount("tmpfs", root + h, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    if os.path.exists("/etc/ld.so.cache"):  # the dynamic linker's index; no secrets
        _bind_ro("/etc/ld.so.cache", root + "/etc/ld.so.cache")
    os.makedirs(root + "/dev", exist_ok=True)
    for d in _DEVICES:
        _bind_ro(f"/dev/{d}", f"{root}/dev/{d}", nodev=False)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    for d in ("/proc", "/tmp", "/var/tmp", "/dev/shm"):
        os.makedirs(root + d, exist_ok=True)
    proc_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    for opt in ("hidepid=invisible", "hidepid=2", ""):
        try:
            mount("proc", root + "/proc", "proc", proc_flags, opt)
            break
        except OSError:
            if not opt:
                raise
    _pivot(root)
    mount("none", "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
    reset_tmp(tmp_mb)


def _pivot(root: str) -> None:
    os.makedirs(root + "/.old", exist_ok=True)
    num = _SYS_PIVOT_ROOT.get(os.uname().machine)
    os.chdir(root)
    if num is None:  # unknown arch: move the new root over / and chroot into it
        mount(root, "/", None, 8192)  # MS_MOVE
        os.chroot(".")
    else:
        _ok(libc().syscall(num, b".", b".old"), "pivot_root")
        os.chdir("/")
        umount("/.old")
        os.rmdir("/.old")
    os.chdir("/")


def reset_tmp(tmp_mb: int, only_dirty: bool = False) -> None:
    """Fresh, empty tmpfs on /tmp, /var/tmp and /dev/shm (whatever a sample left is gone).
    ``only_dirty``: skip a directory that is still empty (its owner and mode are root's,
    beyond a program's reach, so an empty one carries nothing over)."""
    for d in TMP_DIRS:
        if only_dirty and not os.listdir(d):
            continue
        with contextlib.suppress(OSError):
            umount(d)
        tmpfs(d, tmp_mb)


# --------------------------------------------------------------------------- processes


def drop_privileges(uid: int | None, nested_userns: bool) -> None:
    """Become ``uid`` (as root), or enter a user namespace of our own (without root: our
    capabilities then apply only to that empty namespace, so the mounts above cannot be
    undone); then no setuid binary can give anything back."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif nested_userns:
        _ok(libc().unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)")
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def new_ipc_namespace() -> None:
    """System V IPC objects and POSIX message queues of our own: they die with the sample
    instead of outliving it (state and memory a later sample or the host could see)."""
    _ok(libc().unshare(CLONE_NEWIPC), "unshare(CLONE_NEWIPC)")


def set_limits(cpu_s: int, mem_b: int, fsize_b: int, nproc: int | None, nofile: int) -> None:
    lim, R = resource.setrlimit, resource
    lim(R.RLIMIT_CORE, (0, 0))
    lim(R.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    lim(R.RLIMIT_AS, (mem_b, mem_b))
    lim(R.RLIMIT_FSIZE, (fsize_b, fsize_b))
    lim(R.RLIMIT_NOFILE, (nofile, nofile))
    if nproc is not None:
        lim(R.RLIMIT_NPROC, (nproc, nproc))


# --------------------------------------------------------------------------- landlock

_FS_READ = (1 << 0) | (1 << 2) | (1 << 3)  # execute, read file, read dir
_FS_ALL_V1 = (1 << 13) - 1
_FS_FILE = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 14) | (1 << 15)  # rights a file rule may hold
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]


def landlock_abi() -> int:
    """Landlock's ABI version on this kernel (0: none)."""
    try:
        ret = libc().syscall(_SYS_LANDLOCK[0], None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(ret, 0)


def landlock(read: list[str], write: list[str]) -> None:
    """Read-only access to ``read``, read-write to ``write``, nothing else on the
    filesystem; no TCP; no signals or abstract unix sockets outside this domain.
    Needs ABI >= 6 (signal scoping); raises OSError otherwise."""
    abi = landlock_abi()
    if abi < 6:
        raise OSError(f"landlock ABI {abi} < 6 (no signal scoping)")
    fs = _FS_ALL_V1 | (1 << 13) | (1 << 14) | (1 << 15)  # + refer, truncate, ioctl_dev
    attr = _RulesetAttr(fs, 3, _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL)
    call = libc().syscall
    rfd = _ok(call(_SYS_LANDLOCK[0], ctypes.byref(attr), ctypes.c_size_t(24), 0), "landlock")
    try:
        for paths, allowed in ((read, _FS_READ), (write, fs)):
            for p in paths:
                if not os.path.exists(p):
                    continue
                fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
                try:
                    mask = allowed if os.path.isdir(p) else allowed & _FS_FILE
                    rule = _PathBeneath(mask, fd)
                    _ok(call(_SYS_LANDLOCK[1], rfd, 1, ctypes.byref(rule), 0), f"landlock {p}")
                finally:
                    os.close(fd)
        prctl(PR_SET_NO_NEW_PRIVS, 1)
        _ok(call(_SYS_LANDLOCK[2], rfd, 0), "landlock_restrict_self")
    finally:
        os.close(rfd)
