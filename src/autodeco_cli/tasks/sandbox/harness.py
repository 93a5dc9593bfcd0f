"""The child-side runner: the only code of ours that shares a process with the program under test.

This file is not imported by the judge; its source is handed to the sandboxed interpreter as
``python -I -S -B -X utf8 -c <this file> <job-fd> <results-fd>``, so it must stay self-contained
(stdlib only, nothing from autodeco_cli). It reads the job from an inherited fd, then

* ``script`` jobs: runs the program as ``__main__`` (stdin/stdout are the parent's pipes);
* ``call`` jobs: decodes the arguments, runs the program's definitions, calls the entry point and
  writes the return value, converted to tagged plain JSON, as ONE line on the results fd.

Nothing here is trusted afterwards. The job never contains expected outputs, and whatever arrives on
the results fd is only a *claim* about the return value: the program shares this process and can
write any bytes to any fd, so the parent (livecodebench.py) decodes the claim as plain data and
compares it with expected values the sandbox never saw. The references below are captured before the
program runs only so that an honest program that happens to monkeypatch ``json``/``builtins`` is
still reported faithfully.

Tagged value format (so the parent can tell a tuple from a list, and dict keys keep their type):
``null | true | false | <number> | <string> | ["L", [...]] | ["T", [...]] | ["D", [[k, v], ...]]
| ["F", "nan" | "inf" | "-inf"]``.
"""


def _capture_encoder():
    """An encoder built only from references taken now, before the program can patch anything."""
    import json.encoder as je

    quote = je.encode_basestring_ascii  # the C implementation, looked up once here
    t_type, t_bool, t_int, t_float, t_str, t_list, t_tuple, t_dict = type, bool, int, float, str, list, tuple, dict
    is_inst = isinstance
    int_repr, float_repr, str_copy = int.__repr__, float.__repr__, str.__str__
    list_iter, tuple_iter, dict_items = list.__iter__, tuple.__iter__, dict.items
    join = "".join
    special = {"nan": '["F","nan"]', "inf": '["F","inf"]', "-inf": '["F","-inf"]'}

    def enc(x, depth):
        if depth > 200:
            raise ValueError("result nested too deeply")
        t = t_type(x)
        if x is None:
            return "null"
        if t is t_bool:
            return "true" if x else "false"
        if is_inst(x, t_bool):  # unreachable (bool cannot be subclassed); kept for clarity
            raise TypeError("bool subclass")
        if is_inst(x, t_int):
            return int_repr(x)  # the int value itself, never a subclass's __repr__
        if is_inst(x, t_float):
            r = float_repr(x)
            return special.get(r, r)
        if is_inst(x, t_str):
            return quote(str_copy(x))
        if is_inst(x, t_list):
            return '["L",[' + ",".join([enc(v, depth + 1) for v in list_iter(x)]) + "]]"
        if is_inst(x, t_tuple):
            return '["T",[' + ",".join([enc(v, depth + 1) for v in tuple_iter(x)]) + "]]"
        if is_inst(x, t_dict):
            items = [join(("[", enc(k, depth + 1), ",", enc(v, depth + 1), "]")) for k, v in dict_items(x)]
            return '["D",[' + ",".join(items) + "]]"
        raise TypeError("unsupported result type %s" % t.__name__)

    return lambda value: enc(value, 0)


# The opt-in guard's rules. Event-name prefixes it refuses outright:
_GUARD_DENY_PREFIX = (
    "socket.",
    "subprocess.",
    "ctypes.",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "os.startfile",
    "os.forkpty",
    "pty.",
    "os.killpg",
    "os.setns",
    "os.unshare",
    "os.pidfd_open",
    "signal.pidfd_send_signal",
    "webbrowser.",
    "ftplib.",
    "smtplib.",
    "http.client.",
    "urllib.",
    "telnetlib.",
    "poplib.",
    "imaplib.",
    "nntplib.",
    "os.symlink",
    "sqlite3.",
)
# C modules that open or create files without an audited open (sqlite, dbm, readline history,
# POSIX shared memory), plus ctypes and the subprocess helper.
_GUARD_DENY_MODULES = {
    "_ctypes",
    "ctypes",
    "_posixsubprocess",
    "_sqlite3",
    "sqlite3",
    "_dbm",
    "_gdbm",
    "dbm",
    "readline",
    "_posixshmem",
}
# (path arg index, dir_fd arg index) of events that modify the filesystem.
_GUARD_PATH_EVENTS = {
    "os.remove": ((0, 1),),
    "os.rmdir": ((0, 1),),
    "os.rename": ((0, 2), (1, 3)),
    "os.link": ((0, 2), (1, 3)),
    "os.mkdir": ((0, 2),),
    "os.chmod": ((0, 2),),
    "os.chown": ((0, 3),),
    "os.utime": ((0, 3),),
    "os.truncate": ((0, None),),
    "os.mkfifo": ((0, 2),),
    "os.mknod": ((0, 3),),
    "os.setxattr": ((0, None),),
    "os.removexattr": ((0, None),),
    "os.chflags": ((0, None),),
    "shutil.rmtree": ((0, 1),),
    "shutil.copyfile": ((1, None),),
    "shutil.move": ((1, None),),
}


def _install_guard(root):
    """The opt-in audit-hook guard (AUTODECO_SANDBOX=guard): a speed bump, not a wall.

    Refuses sockets, subprocesses, ctypes, C modules that write files behind the hook's back,
    signalling other processes and filesystem writes outside `root`. Known gaps are listed in
    isolation.GUARD_WARNING.
    """
    import os
    import sys

    realpath, join, getpid, getcwd, isdir = os.path.realpath, os.path.join, os.getpid, os.getcwd, os.path.isdir
    fspath, isabs, sep, readlink = os.fspath, os.path.isabs, os.sep, os.readlink
    root = realpath(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    deny_prefix, deny_modules, path_events = _GUARD_DENY_PREFIX, _GUARD_DENY_MODULES, _GUARD_PATH_EVENTS
    allowed_devices = {"/dev/null", "/dev/stdout", "/dev/stderr"}

    def text(path):
        p = fspath(path)
        return p.decode("utf-8", "surrogateescape") if isinstance(p, bytes) else p

    def inside(path, dir_fd=None):
        if path is None or isinstance(path, int):
            return True  # an fd the program already opened through a checked path
        try:
            p = text(path)
            if p in allowed_devices:
                return True
            if not isabs(p):
                # The "open" event does not carry dir_fd, so a relative path may be resolved against
                # a directory fd rather than the cwd: refuse ".." so it cannot climb out of either.
                if ".." in p.split(sep):
                    return False
                base = readlink("/proc/self/fd/%d" % dir_fd) if isinstance(dir_fd, int) else getcwd()
                p = join(base, p)
            p = realpath(p)
        except Exception:
            return False
        return p == root or p.startswith(root + "/")

    def hook(event, args):
        if event.startswith(deny_prefix):
            raise PermissionError("sandbox: %s is not allowed" % event)
        if event == "import" and args and str(args[0]).split(".")[0] in deny_modules:
            raise PermissionError("sandbox: import of %s is not allowed" % args[0])
        if event == "os.kill" and args[0] not in (0, getpid()):
            raise PermissionError("sandbox: signalling other processes is not allowed")
        if event == "open":
            flags = args[2] if len(args) > 2 else 0
            if isinstance(flags, int) and flags & write_flags and not inside(args[0]):
                raise PermissionError("sandbox: writing outside the working directory")
            # A directory fd from outside would let a later relative open escape (dir_fd=...).
            if not isinstance(args[0], int) and not inside(args[0]):
                try:
                    if isdir(text(args[0])):
                        raise PermissionError("sandbox: opening directories outside the working directory")
                except (TypeError, ValueError):
                    pass
        spec = path_events.get(event)
        if spec:
            for pi, di in spec:
                p = args[pi] if pi < len(args) else None
                d = args[di] if di is not None and di < len(args) else None
                if not inside(p, d):
                    raise PermissionError("sandbox: %s outside the working directory" % event)

    sys.addaudithook(hook)


def _fresh_main():
    """A new ``__main__`` module for the program, so pickling and ``import __main__`` behave as in
    a normal script and our own names stay out of its namespace."""
    import builtins
    import sys
    import types

    if not hasattr(builtins, "exit"):  # -S skips site, which normally adds exit()/quit()
        builtins.exit = builtins.quit = sys.exit
    mod = types.ModuleType("__main__")
    mod.__dict__.update({"__builtins__": builtins, "__file__": "solution.py"})
    sys.modules["__main__"] = mod
    sys.argv = ["solution.py"]
    return mod.__dict__


def _run_script(job):
    ns = _fresh_main()
    if job.get("prelude"):
        exec(compile(job["prelude"], "<prelude>", "exec"), ns)
    code = compile(job["src"], "solution.py", "exec")
    if not job.get("exit_is_normal"):
        exec(code, ns)
        return
    try:
        exec(code, ns)
    except SystemExit:
        pass  # LiveCodeBench treats any sys.exit()/exit() as the normal end of a stdin program


def _run_call(job, results_fd):
    import json
    import os
    import sys

    # Captured before any program code runs (see the module docstring for why this is not what
    # makes the judge sound).
    encode, write, exit_now = _capture_encoder(), os.write, os._exit
    args = [json.loads(line) for line in job["args"]]  # decoded before the program can touch json
    ns = _fresh_main()
    if job.get("prelude"):
        exec(compile(job["prelude"], "<prelude>", "exec"), ns)
    exec(compile(job["src"], "solution.py", "exec"), ns)
    target = ns[job["cls"]]() if job.get("cls") else None
    fn = getattr(target, job["func"]) if target is not None else ns[job["func"]]
    value = fn(*args)
    line = ('{"value":' + encode(value) + "}\n").encode("ascii")
    while line:
        line = line[write(results_fd, line) :]
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    # Skip interpreter shutdown: atexit handlers and finalizers are the program's, not the call's.
    exit_now(0)


def main():
    import json
    import os
    import sys

    job_fd, results_fd = int(sys.argv[1]), int(sys.argv[2])
    with open(job_fd, "rb", closefd=True) as f:
        job = json.loads(f.read())
    if job.get("guard_root"):
        _install_guard(job["guard_root"])
    if job["kind"] == "call":
        _run_call(job, results_fd)
    else:
        if results_fd >= 0:
            os.close(results_fd)
        _run_script(job)


if __name__ == "__main__":
    main()
