/* The only code that touches the core register block (FNPU_CORE_* offsets at FNPU_CORE_MMIO_BASE). */
#ifndef FW_MMIO_H
#define FW_MMIO_H

#include "fnpu_hw.h"
#include "compiler.h"

/* A KICK hands the device an argument block in SRAM and the device answers by writing SRAM, so plain
 * memory accesses must not move across a register access: the fence orders them for the hardware and
 * the "memory" clobber for the compiler. */
static inline uint32_t mmio_read(uint32_t offset)
{
	uint32_t value = *(volatile const uint32_t *)(uintptr_t)(FNPU_CORE_MMIO_BASE + offset);

	__asm__ volatile("fence i, r" ::: "memory");
	return value;
}

static inline void mmio_write(uint32_t offset, uint32_t value)
{
	__asm__ volatile("fence rw, o" ::: "memory");
	*(volatile uint32_t *)(uintptr_t)(FNPU_CORE_MMIO_BASE + offset) = value;
}

/* Start a unit on the argument block at arg and return its CORE_STATUS (the units act at once). */
static inline FW_MUST_CHECK enum fnpu_status mmio_kick(uint32_t kick_offset, const void *arg)
{
	mmio_write(kick_offset, (uint32_t)(uintptr_t)arg);
	return (enum fnpu_status)mmio_read(FNPU_CORE_STATUS);
}

#endif /* FW_MMIO_H */
