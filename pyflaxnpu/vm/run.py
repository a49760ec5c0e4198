"""Run one command in a fresh guest with N NPUs and return its exit status.

Order matters: kernel, initramfs and driver first (cached or incremental), then the device-model servers
(they create the guest-RAM file and must listen before QEMU connects), then QEMU. The console is streamed
to our stdout; init.sh's markers delimit the boot (hidden unless verbose, shown when it fails) and carry
the command's status. Whatever happens, QEMU is killed, the servers stopped and the files removed.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.firmware import search_paths
from . import devices, driver, initramfs, kernel, qemu
from .errors import VmError

START = b"FLAXNPU-VM-START"
EXIT = b"FLAXNPU-VM-EXIT="
GUEST_ERROR = b"flaxnpu-vm: error: "
SETUP_FAILED = 125  # our status when the guest setup (not the command) failed, as docker run does
REPO = Path(__file__).resolve().parents[2]
# Host environment the command keeps in the guest; HOME is read-only there, so caches go to /tmp.
PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH", "OPENBLAS_NUM_THREADS", "TERM", "USER")


@dataclass
class VmOptions:
    command: list[str]
    npus: int = 1
    memory: int = 512 << 20
    kernel_version: str | None = None
    accel: str = "tcg"
    smp: int = 1
    workdir: Path = field(default_factory=Path.cwd)
    driver_dir: Path | None = REPO / "driver"  # None: boot without the kernel driver
    firmware: Path | None = None  # None: the runtime's search order
    env: dict[str, str] = field(default_factory=dict)
    boot_timeout: float = 120.0
    timeout: float = 3600.0
    verbose: bool = False
    logs_dir: Path | None = None  # keep the device models' and firmwares' logs here
    allow_device_loss: bool = False  # a dead device model is reported, QEMU goes on (device-loss tests)
    plain_ivshmem: bool = False  # also attach an ivshmem device that is not an NPU
    out: Callable[[bytes], None] = field(default=lambda b: (sys.stdout.buffer.write(b), sys.stdout.buffer.flush()))
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))


def _cmdline_safe(path: Path, what: str) -> str:
    text = str(path)
    if any(c.isspace() for c in text) or '"' in text:
        raise VmError(f"{what} {text!r} contains spaces or quotes, which the kernel command line cannot carry")
    return text


def _find_firmware(opts: VmOptions) -> Path | None:
    if opts.npus == 0:
        return None
    candidates = [opts.firmware] if opts.firmware else search_paths()
    for p in candidates:
        if p.is_file():
            return p.resolve()
    raise VmError(f"no NPU firmware image for the guest (looked in: {', '.join(map(str, candidates))}); "
                  "build it with `make firmware` or pass --firmware FILE")


def _write_command(opts: VmOptions, run_dir: Path, fw: Path | None) -> None:
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith("FLAXNPU_")})
    env.update({"TMPDIR": "/tmp", "XDG_CACHE_HOME": "/tmp/.cache", "FLAXNPU_VM": "1"})
    if fw is not None:
        env["FLAXNPU_FIRMWARE"] = str(fw)  # what the driver got, for the user-space runtime too
    env.update(opts.env)
    lines = [f"cd {shlex.quote(str(opts.workdir))} || exit {SETUP_FAILED}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append("exec " + shlex.join(opts.command))
    (run_dir / "cmd.sh").write_text("\n".join(lines) + "\n")


class Console:
    """Splits QEMU's serial output into lines, finds the markers and decides what reaches the user."""

    def __init__(self, opts: VmOptions) -> None:
        self.opts = opts
        self.started = False
        self.status: int | None = None
        self.guest_error: str | None = None
        self.boot_log: deque[bytes] = deque(maxlen=200)
        self._partial = b""

    def feed(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line + b"\n")

    def flush(self) -> None:
        if self._partial:
            self._line(self._partial)
            self._partial = b""

    def _line(self, line: bytes) -> None:
        text = line.rstrip(b"\r\n")
        if text.startswith(EXIT) and text[len(EXIT):].isdigit():
            self.status = int(text[len(EXIT):])
            return
        if text.startswith(GUEST_ERROR):
            self.guest_error = text[len(GUEST_ERROR):].decode(errors="replace")
        if text == START:
            self.started = True
            return
        if not self.started:
            self.boot_log.append(line)
            if not self.opts.verbose:
                return
        self.opts.out(line)

    def boot_text(self) -> str:
        return b"".join(self.boot_log).decode(errors="replace").rstrip() or "(nothing)"


def _signal_to_interrupt() -> Callable[[], None]:
    """SIGTERM behaves like Ctrl-C (cleanup runs); returns the undo."""
    try:
        old = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, old)


def run(opts: VmOptions) -> int:
    if not opts.command:
        raise VmError("no command: flaxnpu vm [options] -- CMD ARGS...")
    if not 0 <= opts.npus <= qemu.MAX_NPUS:
        raise VmError(f"--npus {opts.npus}: 0 to {qemu.MAX_NPUS}")
    if not 64 << 20 <= opts.memory <= 2 << 30 or opts.memory % (1 << 20):
        raise VmError("--memory must be whole MiB between 64M and 2G (above 2 GiB, guest-physical addresses "
                      "are no longer offsets in the guest-RAM file the device models read)")
    workdir = opts.workdir.resolve()
    if workdir == Path("/"):
        raise VmError("the work directory (shared read-write) cannot be /: run from a project directory")
    opts.workdir = workdir
    qemu.find_qemu()
    qemu.accel_args(opts.accel)
    t0 = time.monotonic()
    kern = kernel.prepare(opts.kernel_version, log=opts.log)
    initrd = initramfs.build(kern)
    ko = driver.build(kern, opts.driver_dir) if opts.driver_dir is not None else None
    fw = _find_firmware(opts)
    if opts.verbose:
        opts.log(f"flaxnpu vm: kernel {kern.version}, driver {ko or 'none'}, firmware {fw or 'none'}, "
                 f"prepared in {time.monotonic() - t0:.1f} s")

    run_dir = Path(tempfile.mkdtemp(prefix="flaxnpu-vm-"))
    ram_path = Path("/dev/shm") / f"{run_dir.name}.ram"
    append = " ".join(["console=ttyS0", "panic=-1", "quiet", "loglevel=4",
                       f"flaxnpu_vm.work={_cmdline_safe(workdir, 'work directory')}",
                       f"flaxnpu_vm.run={_cmdline_safe(run_dir, 'run directory')}",
                       *([f"flaxnpu_vm.ko={_cmdline_safe(ko.resolve(), 'driver')}"] if ko else []),
                       *([f"flaxnpu_vm.fw={_cmdline_safe(fw, 'firmware')}"] if fw else [])])
    _write_command(opts, run_dir, fw)
    servers = devices.DeviceServers(opts.npus, run_dir, ram_path, opts.memory)
    proc: subprocess.Popen[bytes] | None = None
    undo = _signal_to_interrupt()
    try:
        if opts.npus == 0:  # no server creates the RAM file: QEMU needs one to exist or creates it itself
            ram_path.touch()
        servers.start()
        plain = None
        if opts.plain_ivshmem:
            plain = ram_path.with_suffix(".plain")
            with open(plain, "wb") as f:
                f.truncate(1 << 20)
        spec = qemu.GuestSpec(kern.vmlinux, initrd, append, opts.memory, ram_path, servers.sockets, workdir,
                              opts.accel, opts.smp, plain)
        argv = qemu.command(spec)
        if opts.verbose:
            opts.log("flaxnpu vm: " + shlex.join(argv))
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return _supervise(opts, proc, servers, time.monotonic())
    finally:
        undo()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        servers.stop()
        if opts.logs_dir is not None:
            opts.logs_dir.mkdir(parents=True, exist_ok=True)
            for p in run_dir.glob("npu*.log"):
                shutil.copy(p, opts.logs_dir / p.name)
        ram_path.unlink(missing_ok=True)
        ram_path.with_suffix(".plain").unlink(missing_ok=True)
        for p in sorted(run_dir.iterdir()) if run_dir.exists() else []:
            p.unlink(missing_ok=True)
        run_dir.rmdir()


def _supervise(opts: VmOptions, proc: subprocess.Popen[bytes], servers: devices.DeviceServers, t0: float) -> int:
    """Stream the console until QEMU exits; enforce the timeouts; notice a dead device model."""
    assert proc.stdout is not None
    con = Console(opts)
    reported: set[object] = set()
    fd = proc.stdout.fileno()
    eof = False
    boot_time: float | None = None
    while not eof:
        if select.select([fd], [], [], 0.2)[0]:
            data = os.read(fd, 65536)
            eof = not data
            con.feed(data)
        now = time.monotonic() - t0
        if con.started and boot_time is None:
            boot_time = now
            if opts.verbose:
                opts.log(f"flaxnpu vm: guest up in {boot_time:.1f} s")
        if eof or con.status is not None:
            continue
        if not con.started and now > opts.boot_timeout:
            hint = " (--accel kvm: this host's KVM may not run a stock kernel; try --accel tcg)" \
                if opts.accel == "kvm" else ""
            raise VmError(f"the guest did not come up within {opts.boot_timeout:.0f} s{hint}; "
                          f"console so far:\n{con.boot_text()}")
        if now > opts.timeout:
            raise VmError(f"the command did not finish within --timeout {opts.timeout:.0f} s; QEMU was killed")
        dead = servers.dead()
        if dead is not None and opts.allow_device_loss:
            if dead not in reported and dead[1] != 0:  # 0: a clean exit when QEMU hung up at power-off
                reported.add(dead)
                opts.log("flaxnpu vm: " + servers.describe_death(*dead) + "; going on (--allow-device-loss)")
        elif dead is not None:
            # The guest may just have powered off (QEMU closing the socket ends the server): give QEMU a moment.
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                raise VmError(servers.describe_death(*dead) + "\nQEMU was killed.") from None
    con.flush()
    try:
        code = proc.wait(10)
    except subprocess.TimeoutExpired:
        code = None  # the guest printed its status but did not power off: killed by run()'s cleanup
    if opts.verbose:
        opts.log(f"flaxnpu vm: QEMU exited ({code}) after {time.monotonic() - t0:.1f} s")
    if con.guest_error is not None and con.status == SETUP_FAILED:
        raise VmError(f"guest setup failed: {con.guest_error}; console:\n{con.boot_text()}")
    if con.status is not None:
        return con.status
    if not con.started:
        raise VmError(f"QEMU exited with code {code} before the guest came up; console:\n{con.boot_text()}")
    if code is not None and code & 1:  # the console line was lost; isa-debug-exit: (status << 1) | 1
        return code >> 1
    raise VmError(f"the guest stopped without reporting the command's status (QEMU exit code {code}); "
                  "a kernel panic or a crash of the command's parent shell, see the console above")
