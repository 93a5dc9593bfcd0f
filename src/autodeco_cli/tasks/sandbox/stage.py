"""The in-namespace stage: builds the sandbox's fresh root, then starts the program in it unprivileged.

Like harness.py this file is run, not imported: ``python -I -S -B -c <this file> <config-json>``,
started by the judge with the run's rlimits already applied. Stdlib only. Three processes:

* the stage (P0, host pid namespace) calls unshare() for new mount, net, ipc, uts and pid
  namespaces (plus a user namespace when not root), forks P1 and mirrors P1's exit status;
* P1 is pid 1 of the new pid namespace: it mounts a tmpfs as the new root, binds in read-only only
  what the interpreter needs (prefix, stdlib, shared-library directories), adds a minimal /dev, a
  fresh /proc for the new pid namespace and a size-capped private /tmp, pivots into it and detaches
  the host's root, so no host path (data, repository, sockets, other processes) exists any more;
* P2 (forked by P1) drops to the throw-away uid (root mode) with no capabilities and no_new_privs,
  and execs the interpreter on harness.py. When P2 ends, P1 exits with its status and the kernel
  kills whatever else is left in the namespace.

Any failure before the program starts is reported on stderr with the prefix ``sandbox-stage:`` and
exit status 125, which the judge's probe turns into "isolation unavailable".
"""

import ctypes
import json
import os
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
STAGE_FAILED = 125

_libc = ctypes.CDLL(None, use_errno=True)


def _ok(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(src, target, fstype, flags, data=None):
    _ok(_libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), "mount " + target)


def prctl(option, arg):
    _ok(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl %d" % option)


def bind_ro(src, dst):
    """A read-only, nosuid, nodev bind of one host file or directory (not its sub-mounts)."""
    mount(src, dst, None, MS_BIND)
    # In a user namespace a remount must keep the flags the host mount has locked (noexec among
    # them); atime flags are preserved by the kernel when none is given.
    keep = MS_NOEXEC if os.statvfs(dst).f_flag & os.ST_NOEXEC else 0
    mount(None, dst, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)


def tmpfs(target, options, flags=MS_NOSUID | MS_NODEV):
    mount("tmpfs", target, "tmpfs", flags, options)


def _make(root, path, is_file):
    full = root + path
    os.makedirs(os.path.dirname(full) if is_file else full, mode=0o755, exist_ok=True)
    if is_file and not os.path.exists(full):
        os.close(os.open(full, os.O_CREAT | os.O_WRONLY, 0o644))
    return full


def build_root(cfg):
    """Mount the fresh root under cfg["root"] and pivot into it (P1, before the program exists)."""
    root = cfg["root"]
    os.umask(0o022)  # the judge spawns us with 077; the program's uid must traverse what we make
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we do here propagates to the host
    tmpfs(root, "size=4m,nr_inodes=4096,mode=0755")
    for path, target in cfg["symlinks"]:
        os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
        os.symlink(target, root + path)
    for path, is_file in cfg["binds"]:  # parents before children (the judge sorts them)
        bind_ro(path, _make(root, path, is_file))
    for path in cfg["hide"]:  # e.g. the interpreter's site-packages inside a bound prefix
        tmpfs(root + path, "size=4k,mode=0555", MS_NOSUID | MS_NODEV | MS_RDONLY)
    build_dev(root, cfg["devices"])
    os.makedirs(root + "/proc", mode=0o555)
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.makedirs(root + "/tmp", mode=0o755)
    owner = ",uid=%d,gid=%d" % (cfg["uid"], cfg["gid"])
    tmpfs(
        root + "/tmp", "size=%dm,nr_inodes=8192,mode=0700%s" % (cfg["tmp_mb"], owner), MS_NOSUID | MS_NODEV | MS_NOEXEC
    )
    os.makedirs(root + cfg["cwd"], mode=0o700)
    os.chown(root + cfg["cwd"], cfg["uid"], cfg["gid"])
    os.makedirs(root + "/etc", mode=0o755, exist_ok=True)
    os.chdir(root)
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is not None and _libc.syscall(nr, b".", b".") == 0:
        # pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves the
        # host's tree unreachable from this mount namespace.
        _ok(_libc.umount2(b".", MNT_DETACH), "umount old root")
    else:
        os.chroot(".")  # unknown arch: the program has no CAP_SYS_CHROOT to climb back out
    os.chdir("/")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _libc.sethostname(b"sandbox", 7)


def build_dev(root, devices):
    dev = root + "/dev"
    os.makedirs(dev, mode=0o755)
    tmpfs(dev, "size=64k,nr_inodes=64,mode=0755", MS_NOSUID | MS_NOEXEC)
    for name in devices:
        bind_dev = _make(root, "/dev/" + name, True)
        mount("/dev/" + name, bind_dev, None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, dev + "/" + name)
    os.makedirs(dev + "/shm", mode=0o755)
    tmpfs(dev + "/shm", "size=4m,nr_inodes=256,mode=1777", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    mount(None, dev, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NOEXEC)


def start_program(cfg):
    """P2: become the unprivileged program. Never returns."""
    keep = set(cfg["keep_fds"]) | {0, 1, 2}
    for fd in os.listdir("/proc/self/fd"):
        if int(fd) not in keep:
            try:
                os.close(int(fd))
            except OSError:
                pass
    os.chdir(cfg["cwd"])
    os.umask(0o077)
    if cfg["drop_uid"]:
        for cap in range(64):  # no capability can come back through exec
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                break
        os.setgroups([])
        os.setresgid(cfg["gid"], cfg["gid"], cfg["gid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # re-armed: a uid change clears it
    if os.getppid() != 1:
        raise OSError("the namespace's init is gone")
    os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])


def init(cfg):
    """P1, pid 1 of the new pid namespace. Exits with the program's status."""
    # Our parent (P0) lives outside this pid namespace, so getppid() is 0 here and cannot detect
    # a parent that died before this line; P0 shares our process group, which the judge kills.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    build_root(cfg)
    prctl(PR_SET_DUMPABLE, 0)  # the program may share our uid (userns): keep it out of our memory
    child = os.fork()
    if child == 0:
        try:
            start_program(cfg)
        except BaseException as exc:  # noqa: BLE001 - report and fail, whatever it was
            _fail(exc)
    for fd in cfg["keep_fds"]:
        os.close(fd)
    while True:  # as init we also reap orphans; the first that matters is the program
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            os._exit(_exit_code(status))


def _exit_code(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _fail(exc):
    try:
        os.write(2, ("sandbox-stage: %s\n" % (exc,)).encode("utf-8", "replace"))
    finally:
        os._exit(STAGE_FAILED)


def enter_namespaces(cfg):
    flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWPID
    uid, gid = os.getuid(), os.getgid()
    if cfg["userns"]:
        flags |= CLONE_NEWUSER
    _ok(_libc.unshare(flags), "unshare")
    if cfg["userns"]:
        # Unprivileged: only our own ids may be mapped, one to one. The program then runs with
        # our uid but, after exec as a non-zero uid, with no capabilities in the namespace.
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", "%d %d 1" % (uid, uid)),
            ("gid_map", "%d %d 1" % (gid, gid)),
        ):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)


def main():
    cfg = json.loads(sys.argv[1])
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        enter_namespaces(cfg)
        pid = os.fork()
    except BaseException as exc:  # noqa: BLE001
        _fail(exc)
    if pid == 0:
        try:
            init(cfg)
        except BaseException as exc:  # noqa: BLE001
            _fail(exc)
    for fd in cfg["keep_fds"]:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    os._exit(_exit_code(status))


if __name__ == "__main__":
    main()
