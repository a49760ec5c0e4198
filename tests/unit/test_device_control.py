"""The device's control path (register window, RESET/BOOT/NOP/INJECT), with tiny hand-assembled firmwares."""

import pytest
from device_rig import ABI, BASE, CQ_AT, SQ_AT, Rig, handshake_code
from flaxnpu_abi import hw
from flaxnpu_abi.hw import CTRL, STATE, STATUS, CoreReg, Reg
from flaxnpu_sim.firmware_image import build_image
from rv32_asm import T0, T1, WFI, assemble, jal0, li, lw


@pytest.fixture
def rig():
    return Rig()


def test_identity_registers_after_power_on(rig):
    r = rig.regs
    assert r.read(Reg.MAGIC) == hw.SIGNATURE and r.read(Reg.ABI_VERSION) == ABI
    assert r.read(Reg.CAPS) == 0b1_1111_1111_1110 and r.read(Reg.DEVICE_PEER) == 7  # opcodes 1..12 (format 1.2)
    assert rig.state == STATE.OFF and rig.error == (0, 0)


def test_nop_acknowledges_with_an_event_irq(rig):
    rig.control(CTRL.NOP)
    assert rig.irqs == [hw.IRQ_EVENT] and rig.state == STATE.OFF


def test_unknown_control_command(rig):
    rig.control(77)
    assert rig.error == (STATUS.CTRL_UNKNOWN, 77) and rig.state == STATE.OFF


def test_boot_reaches_ready_with_the_firmware_version(rig):
    rig.boot()
    assert rig.state == STATE.READY and rig.error == (0, 0)
    assert rig.regs.read(Reg.FW_VERSION) == 0x010203 and rig.regs.read(Reg.FW_ABI) == ABI
    assert rig.irqs == [hw.IRQ_EVENT]


@pytest.mark.parametrize(("ring", "status_info"), [
    ((SQ_AT, 3, CQ_AT, 8), Reg.SQ_ENTRIES),
    ((SQ_AT, 1, CQ_AT, 8), Reg.SQ_ENTRIES),
    ((SQ_AT, 8192, CQ_AT, 8), Reg.SQ_ENTRIES),
    ((SQ_AT, 8, CQ_AT, 0), Reg.CQ_ENTRIES),
    ((SQ_AT, 8, CQ_AT, 2**31), Reg.CQ_ENTRIES),
    ((BASE - 64, 8, CQ_AT, 8), Reg.SQ_BASE_LO),
    ((BASE + (1 << 20) - 256, 8, CQ_AT, 8), Reg.SQ_BASE_LO),
    ((SQ_AT, 8, 2**64 - 64, 8), Reg.CQ_BASE_LO),
    ((SQ_AT, 8, 0, 8), Reg.CQ_BASE_LO),
])
def test_bad_ring_config_faults_with_ring_config(rig, ring, status_info):
    rig.rings(*ring)
    rig.boot()
    assert rig.state == STATE.FAULT and rig.error == (STATUS.RING_CONFIG, status_info)


def bad_images():
    good = build_image(handshake_code())
    return [
        (good[:40], STATUS.FW_HEADER),
        (b"XXXX" + good[4:], STATUS.FW_HEADER),
        (build_image(handshake_code(), abi=(hw.ABI_MAJOR + 1, 0)), STATUS.FW_ABI),
        (good[:-4], STATUS.FW_SIZE),
        (build_image(handshake_code(), entry=0x1000), STATUS.FW_ENTRY),
        (good[:-1] + bytes([good[-1] ^ 1]), STATUS.FW_CRC),
    ]


@pytest.mark.parametrize(("image", "status"), bad_images())
def test_bad_image_faults_with_its_status_and_reset_recovers(rig, image, status):
    rig.firmware(image)
    rig.control(CTRL.BOOT)
    assert rig.state == STATE.FAULT and rig.error[0] == status
    rig.control(CTRL.BOOT)  # FAULT is left only by RESET
    assert rig.state == STATE.FAULT and rig.error[0] == STATUS.DEVICE_STATE
    rig.control(CTRL.RESET)
    assert rig.state == STATE.OFF and rig.error == (0, 0)
    rig.boot()
    assert rig.state == STATE.READY


def test_image_buffer_outside_memory(rig):
    rig.firmware(build_image(handshake_code()), size=1 << 21)
    rig.control(CTRL.BOOT)
    assert rig.state == STATE.FAULT and rig.error == (STATUS.FW_SIZE, 1 << 21)


def test_firmware_without_handshake_is_fw_boot(rig):
    rig.boot(assemble([WFI, jal0(-4)]))
    assert rig.state == STATE.FAULT and rig.error[0] == STATUS.FW_BOOT


def test_firmware_built_for_another_abi_major(rig):
    rig.boot(handshake_code(abi=0x20001))
    assert rig.state == STATE.FAULT and rig.error == (STATUS.FW_ABI, 0x20001)


def test_firmware_reading_a_write_only_register_faults(rig):
    rig.boot(assemble([*li(T0, hw.CORE_MMIO_BASE), lw(T1, CoreReg.FW_READY, T0), WFI]))
    assert rig.state == STATE.FAULT and rig.error == (STATUS.FW_FAULT, hw.CORE_MMIO_BASE + CoreReg.FW_READY)


def test_firmware_touching_unmapped_memory_faults(rig):
    rig.boot(assemble([*li(T0, 0x4000_0000), lw(T1, 0, T0), WFI]))
    assert rig.state == STATE.FAULT and rig.error == (STATUS.FW_FAULT, 0x4000_0000)


def test_firmware_that_never_idles_is_stopped_by_the_watchdog():
    rig = Rig(budget=10_000)
    rig.boot(assemble([jal0(0)]))
    assert rig.state == STATE.FAULT and rig.error[0] == STATUS.FW_WATCHDOG


def test_boot_while_ready_is_refused_and_leaves_the_device_running(rig):
    rig.boot()
    rig.control(CTRL.BOOT)
    assert rig.state == STATE.READY and rig.error == (STATUS.DEVICE_STATE, STATE.READY)


def test_reset_clears_counters_and_firmware_registers(rig):
    rig.boot()
    rig.regs.write(Reg.JOBS_DONE, 5)  # a host scribbling on RO registers changes nothing the device keeps
    rig.control(CTRL.RESET)
    for reg in (Reg.STATE, Reg.ERROR, Reg.FW_VERSION, Reg.FW_ABI, Reg.HEARTBEAT, Reg.SQ_HEAD, Reg.CQ_TAIL,
                Reg.JOBS_DONE, Reg.JOBS_FAILED, Reg.CYCLES_LO, Reg.CYCLES_HI):
        assert rig.regs.read(reg) == 0, reg.name
    assert rig.regs.read(Reg.MAGIC) == hw.SIGNATURE


def test_inject_with_an_unknown_fault_kind(rig):
    rig.regs.write(Reg.FAULT_KIND, 9)
    rig.control(CTRL.INJECT)
    assert rig.error == (STATUS.CTRL_UNKNOWN, 9)
    with pytest.raises(ValueError, match="hang"):
        rig.dev.inject_fault("melt")


def test_doorbell_from_an_irq_callback_is_queued_not_recursive(rig):
    depth, seen = [0], []

    def irq(v):
        seen.append((v, depth[0]))
        if len(seen) == 1:  # the BOOT acknowledgement: ring again from inside the device
            rig.regs.write(Reg.CTRL, CTRL.NOP)
            rig.regs.write(Reg.CTRL_SEQ, 99)
            rig.dev.doorbell(hw.DOORBELL_CONTROL)
            assert rig.regs.read(Reg.CTRL_ACK) != 99  # not served yet: we are inside the device

    rig.dev._irq = irq
    orig = rig.dev._control

    def counted():
        depth[0] += 1
        try:
            orig()
        finally:
            depth[0] -= 1

    rig.dev._control = counted
    rig.firmware(build_image(handshake_code()))
    rig.regs.write(Reg.CTRL, CTRL.BOOT)
    rig.regs.write(Reg.CTRL_SEQ, 1)
    rig.dev.doorbell(hw.DOORBELL_CONTROL)
    assert rig.regs.read(Reg.CTRL_ACK) == 99 and rig.state == STATE.READY
    assert [d for _, d in seen] == [1, 1]  # both acks raised at depth 1: no nesting
