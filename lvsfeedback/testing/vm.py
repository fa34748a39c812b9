"""
Run a command as root where the kernel has IPVS.

The development machines' own kernel has no ip_vs, so this boots Debian's
kernel (package linux-image-amd64) under qemu with virtme-ng, on the host's
own file system, loads ip_vs and runs the command there. When the host kernel
itself can load ip_vs, the command runs natively instead.

    python -m lvsfeedback.testing.vm [--rwdir DIR] [--timeout S] -- COMMAND...

In the guest the host's files arrive over 9p, which virtme-ng mounts
uncached: every stat and open is a round trip to the host, and a Python
process there spent most of its start-up importing (8 s for Twisted's
reactor). The interpreter's installation, the venv and the working folder
are therefore shared again and remounted read-only with 9p's `cache=loose`,
so each file crosses once per boot; the host must not change them while the
VM runs. Writable folders (--rwdir) stay uncached, and are created when
missing.

The exit status is the command's. Every failure of the runner itself is one
line on stderr starting with "lvsfeedback-vm:" and a non-zero status; the two
timeouts (boot, command) are bounded separately and named when they expire.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

BOOTED_MARKER = "lvsfeedback-vm: guest ready"
EXIT_RUNNER_ERROR = 2
EXIT_BOOT_TIMEOUT = 124
EXIT_COMMAND_TIMEOUT = 125

# Variables worth carrying into the guest, whose environment starts empty.
FORWARDED_ENV = ("PATH", "PYTHONPATH", "HOME", "LANG", "TERM", "CI", "HYPOTHESIS_PROFILE")


class RunnerError(Exception):
    """Why the runner could not run the command; printed as one line."""


@dataclass
class Plan:
    command: list[str]
    cwd: str
    rwdirs: list[str] = field(default_factory=list)
    cached_trees: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    memory: str = "2G"
    cpus: int = 2
    boot_timeout: float = 180.0
    command_timeout: float = 1200.0
    boot_dir: str = "/boot"


def kernel_version(image: str) -> str:
    return os.path.basename(image).removeprefix("vmlinuz-")


def has_ipvs_module(version: str, modules_root: str = "/lib/modules") -> bool:
    pattern = os.path.join(modules_root, version, "kernel/net/netfilter/ipvs/ip_vs.ko*")
    return bool(glob.glob(pattern))


def _version_sort_key(version: str) -> list[int]:
    return [int(part) for part in re.findall(r"\d+", version)]


def find_kernel(boot_dir: str = "/boot", modules_root: str = "/lib/modules") -> str:
    """The newest kernel image in boot_dir whose modules include ip_vs."""
    images = [
        image
        for image in glob.glob(os.path.join(boot_dir, "vmlinuz-*"))
        if has_ipvs_module(kernel_version(image), modules_root)
    ]
    if not images:
        raise RunnerError(
            f"no kernel with an ip_vs module in {boot_dir} "
            f"(looked for vmlinuz-* with {modules_root}/VERSION/.../ip_vs.ko): "
            "apt-get install linux-image-amd64"
        )
    return max(images, key=lambda image: _version_sort_key(kernel_version(image)))


def find_vng() -> str:
    """vng from PATH or beside this interpreter (the project's venv)."""
    beside = os.path.join(os.path.dirname(sys.executable), "vng")
    found = shutil.which("vng") or (beside if os.access(beside, os.X_OK) else None)
    if found is None:
        raise RunnerError("virtme-ng (vng) not found: pip install virtme-ng into the project's venv")
    return found


def find_qemu() -> str:
    found = shutil.which("qemu-system-x86_64")
    if found is None:
        raise RunnerError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return found


def host_has_ipvs() -> bool:
    """True when this kernel has IPVS loaded or can load it (as root)."""
    if os.path.exists("/proc/net/ip_vs"):
        return True
    if os.geteuid() != 0 or shutil.which("modprobe") is None:
        return False
    subprocess.run(["modprobe", "-q", "ip_vs"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return os.path.exists("/proc/net/ip_vs")


def inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def cached_trees(candidates: list[str], rwdirs: list[str]) -> list[str]:
    """
    The candidates worth caching, once each: not the root, not inside
    another candidate, and not inside a writable folder, which must stay
    writable. A writable folder inside a cached tree is mounted again over
    it (see L{remount_script}).
    """
    paths = [os.path.normpath(path) for path in candidates if os.path.normpath(path) != "/"]
    kept: list[str] = []
    for path in paths:
        if (path not in kept
                and not any(inside(path, other) for other in paths if other != path)
                and not any(inside(path, rwdir) for rwdir in rwdirs)):
            kept.append(path)
    return kept


def mount_tag(plan: Plan, path: str) -> str:
    """virtme-ng tags its extra shares in order, the --rwdir ones first, then the --rodir ones."""
    return f"virtme.initmount{(plan.rwdirs + plan.cached_trees).index(path)}"


def remount_script(plan: Plan) -> str:
    """
    Remount each cached tree with 9p caching, then the writable folders it
    hides (virtme-ng mounts the read-only shares last, over them).
    """
    options = "trans=virtio,version=9p2000.L,access=any,msize=524288"
    steps = ["cd /"]
    for tree in plan.cached_trees:
        hidden = [rwdir for rwdir in plan.rwdirs if inside(rwdir, tree)]
        steps.append(f"umount {shlex.quote(tree)} || {_remount_failed(tree)}")
        steps += [f"umount {shlex.quote(rwdir)}" for rwdir in reversed(hidden)]
        steps.append(f"mount -t 9p -o {options},cache=loose,ro {mount_tag(plan, tree)} {shlex.quote(tree)}"
                     f" || {_remount_failed(tree)}")
        steps += [f"mount -t 9p -o {options} {mount_tag(plan, rwdir)} {shlex.quote(rwdir)} || {_remount_failed(rwdir)}"
                  for rwdir in hidden]
    return "; ".join(steps) + "; "


def _remount_failed(path: str) -> str:
    message = shlex.quote(f"lvsfeedback-vm: cannot remount {path} in the guest")
    return f"{{ echo {message} >&2; exit {EXIT_RUNNER_ERROR}; }}"


def guest_script(plan: Plan) -> str:
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in sorted(plan.env.items()))
    return (
        f"{exports}{remount_script(plan)}modprobe ip_vs || exit {EXIT_RUNNER_ERROR}; "
        f"echo {shlex.quote(BOOTED_MARKER)}; "
        f"cd {shlex.quote(plan.cwd)} && exec {shlex.join(plan.command)}"
    )


def vng_command(plan: Plan, vng: str, kernel: str, script: str) -> list[str]:
    """vng running `script`, a file holding L{guest_script}: inline, it would
    count against the kernel command line's 2,048 bytes."""
    argv = [vng, "--run", kernel, "--disable-kvm", "--memory", plan.memory, "--cpus", str(plan.cpus)]
    for rwdir in plan.rwdirs:
        argv += ["--rwdir", rwdir]
    for tree in plan.cached_trees:
        argv += ["--rodir", f"{tree}={tree}"]
    return argv + ["--exec", f"sh {shlex.quote(script)}"]


def _stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def supervise(argv: list[str], plan: Plan, marker: str | None, env: dict[str, str], cwd: str) -> int:
    """
    Run argv, copying its output, and bound it by two deadlines: the boot
    deadline until `marker` is printed (skipped when marker is None), then the
    command deadline.
    """
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, env=env, cwd=cwd,
    )
    try:
        return _follow(process, plan, marker)
    finally:
        # Interrupted or killed (SIGTERM ends the runner through SystemExit):
        # the VM runs in a session of its own and would outlive us.
        if process.returncode is None:
            _stop(process)


def _follow(process: subprocess.Popen, plan: Plan, marker: str | None) -> int:
    booted = marker is None
    deadline = time.monotonic() + (plan.command_timeout if booted else plan.boot_timeout)
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    pending = b""
    out = sys.stdout.buffer
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            _stop(process)
            if booted:
                raise RunnerError(f"command timed out after {plan.command_timeout:g} s", EXIT_COMMAND_TIMEOUT)
            raise RunnerError(f"VM boot timed out after {plan.boot_timeout:g} s", EXIT_BOOT_TIMEOUT)
        if not selector.select(timeout=min(remaining, 1.0)):
            continue
        chunk = os.read(process.stdout.fileno(), 65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").rstrip("\r")
            if not booted and text.strip() == marker:
                booted = True
                deadline = time.monotonic() + plan.command_timeout
                continue
            out.write(line + b"\n")
        out.flush()
    out.write(pending)
    out.flush()
    status = process.wait()
    if not booted:
        raise RunnerError(f"the VM exited (status {status}) before the guest was ready", status or EXIT_RUNNER_ERROR)
    return status


def make_writable_folders(plan: Plan) -> None:
    """
    Create each missing --rwdir folder, as `mkdir -p` would: virtme-ng
    refuses a folder that does not exist, and the guest would then never
    boot. A path that cannot be a folder is refused here, before any boot.
    """
    for rwdir in plan.rwdirs:
        try:
            os.makedirs(rwdir, exist_ok=True)
        except OSError as error:
            raise RunnerError(f"cannot create the writable folder {rwdir}: {error.strerror}") from None


def run(plan: Plan, native: str = "auto") -> int:
    make_writable_folders(plan)
    env = dict(os.environ)
    native_ipvs = native != "never" and host_has_ipvs()
    if native == "always" and not native_ipvs:
        raise RunnerError("the host kernel cannot load ip_vs, and --native=always was asked")
    if native_ipvs:
        return supervise(plan.command, plan, None, {**env, **plan.env}, plan.cwd)
    find_qemu()
    kernel = find_kernel(plan.boot_dir)
    vng = find_vng()
    # vng runs virtme-run, which it looks up on PATH.
    env["PATH"] = os.path.dirname(vng) + os.pathsep + env.get("PATH", "")
    # The host's /tmp is the lower layer of the guest's.
    with tempfile.NamedTemporaryFile("w", prefix="lvsfeedback-vm-", suffix=".sh") as script:
        script.write(guest_script(plan) + "\n")
        script.flush()
        # Started from /, the guest's init keeps its working folder out of the
        # trees remount_script unmounts (a busy mount cannot be replaced).
        return supervise(vng_command(plan, vng, kernel, script.name), plan, BOOTED_MARKER, env, "/")


def parse_args(argv: list[str]) -> tuple[Plan, str]:
    parser = argparse.ArgumentParser(
        prog="python -m lvsfeedback.testing.vm",
        description="Run a command as root on a kernel with IPVS (a virtme-ng VM, or natively).",
    )
    parser.add_argument("--rwdir", action="append", default=[], help="a host folder the guest may write (repeatable)")
    parser.add_argument("--memory", default="2G")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--boot-timeout", type=float, default=180.0, help="seconds until the guest is ready")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds the command may run")
    parser.add_argument("--boot-dir", default="/boot", help="where to look for vmlinuz-* (/boot)")
    parser.add_argument("--native", choices=("auto", "never", "always"), default="auto",
                        help="run on the host when its kernel has ip_vs (auto)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    rwdirs = [os.path.abspath(d) for d in args.rwdir]
    plan = Plan(
        command=command, cwd=os.getcwd(), rwdirs=rwdirs, env=env,
        # What a Python command here imports from: the interpreter's installation, its venv, this folder.
        cached_trees=cached_trees([sys.base_prefix, sys.prefix, os.getcwd()], rwdirs),
        memory=args.memory, cpus=args.cpus, boot_timeout=args.boot_timeout, command_timeout=args.timeout,
        boot_dir=args.boot_dir,
    )
    return plan, args.native


def main(argv: list[str] | None = None) -> int:
    plan, native = parse_args(sys.argv[1:] if argv is None else argv)
    # A SIGTERM unwinds like an interrupt, so the VM is stopped with us.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return run(plan, native)
    except RunnerError as error:
        reason, *status = error.args
        print(f"lvsfeedback-vm: {reason}", file=sys.stderr)
        return status[0] if status else EXIT_RUNNER_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
