"""The QEMU transport: one NpuDevice behind QEMU's ivshmem-doorbell, as that device's ivshmem server.

QEMU 7.2 cannot load a custom PCI device, so the NPU is an `ivshmem-doorbell` device whose server is
this process:
- BAR2 is the server's shared memory (a 4 KiB memfd): the device's register window.
- The guest rings doorbell `(peer << 16) | vector` in BAR0; QEMU writes the eventfd the server handed out
  for that peer and vector. The model is peer 0 (it says so in REG_DEVICE_PEER); its eventfds for vector
  DOORBELL_SUBMIT and DOORBELL_CONTROL wake device.doorbell().
- The device's irq(vector) writes the guest's eventfd for that vector; QEMU injects MSI-X vector `vector`.
- DMA addresses are guest-physical addresses, which are offsets in the guest-RAM file QEMU maps with
  `memory-backend-file,share=on` (true up to 2 GiB of RAM on q35, without a vIOMMU). The server creates
  that file before QEMU starts; several servers (one per NPU) map the same file.

Protocol (QEMU docs/specs/ivshmem-spec.rst): every message is one little-endian int64, some with one fd
as SCM_RIGHTS. To a new peer P: version 0; P; -1 with the shm fd; for each known peer Q (the model
included) Q with each of Q's eventfds in vector order; then P with each of P's own eventfds (P's interrupt
sources). Every other peer gets P with P's eventfds, and P alone (no fd) when P disconnects.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from flaxnpu_abi import hw

from .device import NpuDevice
from .memory import HostMemory

PROTOCOL_VERSION = 0
VECTORS = 2  # doorbells DOORBELL_SUBMIT/DOORBELL_CONTROL in, IRQ_COMPLETION/IRQ_EVENT out
MODEL_PEER = 0
SHM_SIZE = hw.REG_WINDOW_SIZE  # ivshmem wants a power of two; it is the whole BAR2
MAX_RAM = 2 << 30  # above 2 GiB, q35 maps part of RAM at 4 GiB and DMA address != file offset
_MSG = struct.Struct("<q")


@dataclass
class Peer:
    id: int
    conn: socket.socket | None  # None for the model itself
    eventfds: list[int] = field(default_factory=list)


class IvshmemServer:
    """Listens on `socket_path`; serves `device` (built over the shm window and the guest-RAM file).

    `exit_on_disconnect`: serve() returns when the last guest peer leaves (one QEMU run per server).
    """

    def __init__(self, socket_path: str | os.PathLike, ram_path: str | os.PathLike, ram_size: int,
                 exit_on_disconnect: bool = True) -> None:
        if not 0 < ram_size <= MAX_RAM or ram_size % mmap.PAGESIZE:
            raise ValueError(f"guest RAM size {ram_size} must be a multiple of {mmap.PAGESIZE} up to 2 GiB "
                             "(above that, guest-physical addresses are no longer file offsets)")
        self.socket_path = Path(socket_path)
        self.ram_path = Path(ram_path)
        self.exit_on_disconnect = exit_on_disconnect
        self._stop_r, self._stop_w = os.pipe()
        self._created_ram = False
        self.peers: dict[int, Peer] = {}
        self._next_id = MODEL_PEER + 1
        self.shm_fd = os.memfd_create("flaxnpu-regs", os.MFD_CLOEXEC)
        os.ftruncate(self.shm_fd, SHM_SIZE)
        self._shm = mmap.mmap(self.shm_fd, SHM_SIZE)
        self._ram = self._map_ram(ram_size)
        self.model = Peer(MODEL_PEER, None, [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                                             for _ in range(VECTORS)])
        self.device = NpuDevice(HostMemory(self._ram, base=0), regs=memoryview(self._shm), irq=self._irq,
                                peer_id=MODEL_PEER)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket of a killed server
        self._listen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listen.bind(str(self.socket_path))
        self._listen.listen(4)

    def _map_ram(self, size: int) -> mmap.mmap:
        """Create the guest-RAM file (sparse), or join one another server of the same VM created."""
        try:
            fd = os.open(self.ram_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self._created_ram = True
            os.ftruncate(fd, size)
        except FileExistsError:
            fd = os.open(self.ram_path, os.O_RDWR)
            if os.fstat(fd).st_size != size:
                os.close(fd)
                raise ValueError(f"{self.ram_path} exists with another size than {size}: "
                                 "a leftover of another VM? remove it") from None
        try:
            return mmap.mmap(fd, size, mmap.MAP_SHARED)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ protocol

    @staticmethod
    def _send(conn: socket.socket, value: int, fd: int | None = None) -> None:
        socket.send_fds(conn, [_MSG.pack(value)], [] if fd is None else [fd])

    def _accept(self) -> None:
        conn, _ = self._listen.accept()
        peer = Peer(self._next_id, conn, [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                                          for _ in range(VECTORS)])
        self._next_id += 1
        try:
            self._send(conn, PROTOCOL_VERSION)
            self._send(conn, peer.id)
            self._send(conn, -1, self.shm_fd)
            for other in [self.model, *self.peers.values()]:
                for fd in other.eventfds:
                    self._send(conn, other.id, fd)
            for other in self.peers.values():
                for fd in peer.eventfds:
                    self._send(other.conn, peer.id, fd)  # type: ignore[arg-type]
            for fd in peer.eventfds:
                self._send(conn, peer.id, fd)
        except OSError:
            self._close_peer(peer)
            return
        self.peers[peer.id] = peer

    def _close_peer(self, peer: Peer) -> None:
        if peer.conn is not None:
            peer.conn.close()
        for fd in peer.eventfds:
            os.close(fd)
        peer.eventfds.clear()

    def _disconnect(self, peer: Peer) -> None:
        self.peers.pop(peer.id, None)
        self._close_peer(peer)
        for other in self.peers.values():
            with contextlib.suppress(OSError):
                self._send(other.conn, peer.id)  # type: ignore[arg-type]

    def _irq(self, vector: int) -> None:
        """MSI-X vector `vector` to the guest(s): normally one QEMU is connected."""
        for peer in self.peers.values():
            os.eventfd_write(peer.eventfds[vector], 1)

    # ------------------------------------------------------------------ main loop

    def stop(self) -> None:
        """Ask serve() to return (safe from a signal handler or another thread)."""
        with contextlib.suppress(OSError):
            os.write(self._stop_w, b"x")

    def serve(self) -> None:
        """Serve until stop(), or until the last guest disconnects when exit_on_disconnect is set."""
        # Control first: a RESET must not wait behind a submit doorbell read in the same wakeup.
        doorbells = [(self.model.eventfds[hw.DOORBELL_CONTROL], hw.DOORBELL_CONTROL),
                     (self.model.eventfds[hw.DOORBELL_SUBMIT], hw.DOORBELL_SUBMIT)]
        had_peer = False
        while True:
            conns = {p.conn.fileno(): p for p in self.peers.values() if p.conn is not None}
            ready, _, _ = select.select([self._stop_r, self._listen, *conns, *(fd for fd, _ in doorbells)], [], [])
            if self._stop_r in ready:
                return
            for fd, vector in doorbells:
                if fd in ready:
                    try:
                        os.eventfd_read(fd)
                    except BlockingIOError:
                        continue
                    self.device.doorbell(vector)
            for fd, peer in conns.items():
                if fd in ready:
                    # A peer never sends anything after connecting: readable means it hung up.
                    if not peer.conn.recv(64):  # type: ignore[union-attr]
                        self._disconnect(peer)
            if self._listen in ready:
                self._accept()
                had_peer = True
            if self.exit_on_disconnect and had_peer and not self.peers:
                return

    def close(self) -> None:
        """Release everything and remove the socket and (if this server created it) the guest-RAM file."""
        for peer in list(self.peers.values()):
            self._close_peer(peer)
        self.peers.clear()
        self._close_peer(self.model)
        self._listen.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._created_ram:
            with contextlib.suppress(FileNotFoundError):
                self.ram_path.unlink()
        with contextlib.suppress(BufferError):  # a view of it may still be alive in the device
            self._shm.close()
            self._ram.close()
        for fd in (self.shm_fd, self._stop_r, self._stop_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> IvshmemServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
