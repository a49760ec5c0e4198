"""The ivshmem server (QEMU transport of the device model), driven by a fake QEMU peer on the host."""

import mmap
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from flaxnpu_abi import hw
from flaxnpu_abi.hw import CTRL, Reg
from flaxnpu_abi.regio import RegisterBlock
from flaxnpu_sim.ivshmem import SHM_SIZE, IvshmemServer

RAM = 1 << 20
REPO = Path(__file__).resolve().parents[2]


class FakeQemu:
    """Connects like QEMU's ivshmem-doorbell (vectors=2) and keeps what the server sends."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        assert self.recv() == (0, None)  # protocol version
        self.id, fd = self.recv()
        assert fd is None
        value, self.shm_fd = self.recv()
        assert value == -1 and self.shm_fd is not None
        self.eventfds: dict[int, list[int]] = {}
        while len(self.eventfds.get(self.id, [])) < 2:  # own fds come last
            peer, fd = self.recv()
            assert fd is not None
            self.eventfds.setdefault(peer, []).append(fd)

    def recv(self) -> tuple[int, int | None]:
        msg, fds, _, _ = socket.recv_fds(self.sock, 8, 1)
        assert len(msg) == 8
        return struct.unpack("<q", msg)[0], (fds[0] if fds else None)

    def regs(self) -> RegisterBlock:
        assert os.fstat(self.shm_fd).st_size == SHM_SIZE
        return RegisterBlock(mmap.mmap(self.shm_fd, SHM_SIZE), hw.REG_WINDOW_SIZE)

    def ring(self, vector: int) -> None:
        os.eventfd_write(self.eventfds[0][vector], 1)  # the guest wrote (0 << 16) | vector to DOORBELL

    def wait_irq(self, vector: int, timeout: float = 10) -> bool:
        fd = self.eventfds[self.id][vector]
        if not select.select([fd], [], [], timeout)[0]:
            return False
        os.eventfd_read(fd)
        return True


@pytest.fixture
def server(tmp_path):
    srv = IvshmemServer(tmp_path / "npu.sock", tmp_path / "ram", RAM)
    thread = threading.Thread(target=srv.serve, daemon=True)
    thread.start()
    yield srv, thread
    srv.stop()
    thread.join(5)
    srv.close()


def test_peer_gets_window_and_doorbells_answered(server, tmp_path):
    del server  # running; reached through its socket
    q = FakeQemu(tmp_path / "npu.sock")
    assert q.id == 1
    assert sorted(q.eventfds) == [0, 1] and all(len(v) == 2 for v in q.eventfds.values())
    regs = q.regs()
    assert regs.read(Reg.MAGIC) == hw.SIGNATURE
    assert regs.read(Reg.DEVICE_PEER) == 0
    regs.write(Reg.CTRL, CTRL.NOP)
    regs.write(Reg.CTRL_SEQ, 41)
    q.ring(hw.DOORBELL_CONTROL)
    assert q.wait_irq(hw.IRQ_EVENT), "no IRQ_EVENT after a CTRL NOP"
    assert regs.read(Reg.CTRL_ACK) == 41
    assert not q.wait_irq(hw.IRQ_COMPLETION, timeout=0.1)
    # A submit doorbell on a device that is OFF does nothing, and must not wedge the server.
    q.ring(hw.DOORBELL_SUBMIT)
    regs.write(Reg.CTRL_SEQ, 42)
    q.ring(hw.DOORBELL_CONTROL)
    assert q.wait_irq(hw.IRQ_EVENT) and regs.read(Reg.CTRL_ACK) == 42


def test_device_dma_reaches_the_ram_file(server, tmp_path):
    """A DMA address is an offset in the guest-RAM file, and the device sees nothing past its end."""
    srv, _ = server
    assert (tmp_path / "ram").stat().st_size == RAM
    assert srv.device.memory.contains(RAM - 64, 64) and not srv.device.memory.contains(RAM - 63, 64)
    with open(tmp_path / "ram", "r+b") as f:
        f.seek(0x1000)
        f.write(b"\xab" * 16)
    assert srv.device.memory.read(0x1000, 16) == b"\xab" * 16


def test_disconnect_ends_server_and_removes_files(server, tmp_path):
    srv, thread = server
    q = FakeQemu(tmp_path / "npu.sock")
    q.sock.close()
    thread.join(5)
    assert not thread.is_alive(), "server kept running after its only peer left"
    srv.close()
    assert not (tmp_path / "npu.sock").exists() and not (tmp_path / "ram").exists()


def test_second_server_joins_the_same_ram_and_keeps_it(tmp_path):
    with IvshmemServer(tmp_path / "a.sock", tmp_path / "ram", RAM) as a:
        with IvshmemServer(tmp_path / "b.sock", tmp_path / "ram", RAM) as b:
            a.device.memory.write(0x2000, b"npu0")
            assert b.device.memory.read(0x2000, 4) == b"npu0"
        assert (tmp_path / "ram").exists()  # only the creator removes it
    assert not (tmp_path / "ram").exists()
    with pytest.raises(ValueError, match="another size"):
        (tmp_path / "ram").write_bytes(b"x")
        IvshmemServer(tmp_path / "c.sock", tmp_path / "ram", RAM)


def test_server_process_ready_line_and_sigterm(tmp_path):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flaxnpu_sim.server", "--socket", str(tmp_path / "s"),
                             "--ram", str(tmp_path / "ram"), "--ram-size", "1M"],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == f"ready {tmp_path / 's'}"
        q = FakeQemu(tmp_path / "s")
        assert q.regs().read(Reg.MAGIC) == hw.SIGNATURE
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
    assert not (tmp_path / "s").exists() and not (tmp_path / "ram").exists()
