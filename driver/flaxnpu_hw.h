/* SPDX-License-Identifier: GPL-2.0 */
/*
 * flaxnpu: register window access, doorbells, control commands, interrupts.
 *
 * Registers are only touched through REG_RD()/REG_WR() so that every access
 * can be traced by name (dyndbg: "file flaxnpu_hw.c +p").
 */
#ifndef FLAXNPU_HW_H
#define FLAXNPU_HW_H

#include "flaxnpu_drv.h"

/* ivshmem BAR0 register that rings a peer's eventfd: (peer << 16) | vector. */
#define IVSHMEM_REG_DOORBELL 0x0c

u32 flaxnpu_reg_read(struct flaxnpu_device *fdev, u32 off, const char *name);
void flaxnpu_reg_write(struct flaxnpu_device *fdev, u32 off, u32 val, const char *name);

#define REG_RD(fdev, reg) flaxnpu_reg_read(fdev, FNPU_REG_##reg, #reg)
#define REG_WR(fdev, reg, val) flaxnpu_reg_write(fdev, FNPU_REG_##reg, val, #reg)
/* 64-bit values are LO/HI pairs; the device reads them only after a doorbell. */
#define REG_WR64(fdev, reg, val) do { \
	REG_WR(fdev, reg##_LO, lower_32_bits(val)); \
	REG_WR(fdev, reg##_HI, upper_32_bits(val)); \
} while (0)

void flaxnpu_hw_doorbell(struct flaxnpu_device *fdev, u32 vector);
int flaxnpu_hw_ctrl(struct flaxnpu_device *fdev, u32 cmd, unsigned int timeout_ms);
const char *flaxnpu_hw_state_name(u32 state);
int flaxnpu_hw_irq_init(struct flaxnpu_device *fdev);
void flaxnpu_hw_irq_fini(struct flaxnpu_device *fdev);

#endif
