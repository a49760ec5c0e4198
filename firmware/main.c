/*
 * Boot handshake, then the ring loop: on every wake bump the heartbeat, run submission entries while
 * the host has produced some and the completion ring has room, post one completion per job, and idle
 * in wfi until the device model resumes the core (a doorbell).
 */
#include "fnpu_hw.h"
#include "job.h"
#include "mmio.h"
#include "version.h"

int main(void) FW_NORETURN;

static uint32_t sq_head;	/* next ring index to run; mirrored in CORE_SQ_HEAD */
static uint32_t cq_tail;	/* completions the device accepted (the device's REG_CQ_TAIL) */
static uint32_t cq_room;	/* free completion slots last seen; re-read from CQ_HEAD at 0 */
static uint32_t heartbeat;
static uint32_t pending;	/* cpl holds a finished job's completion that found the ring full */
static enum fnpu_status pending_status;
static struct fnpu_cq_entry cpl;

static void log_str(const char *s)
{
	while (*s)
		mmio_write(FNPU_CORE_LOG, (uint8_t)*s++);
}

static void cpu_idle(void)
{
	/* The device model's run() returns here and resumes after it on the next doorbell. */
	__asm__ volatile("wfi" ::: "memory");
}

static uint32_t cq_has_room(void)
{
	if (cq_room == 0) {
		uint32_t entries = mmio_read(FNPU_CORE_CQ_ENTRIES);
		uint32_t used = cq_tail - mmio_read(FNPU_CORE_CQ_HEAD);

		cq_room = used < entries ? entries - used : 0;
	}
	return cq_room != 0;
}

/* Post cpl; on success count the job and let the host see it. CQ_FULL keeps it pending. */
static FW_MUST_CHECK enum fnpu_status retire_job(void)
{
	enum fnpu_status st = mmio_kick(FNPU_CORE_CQ_KICK, &cpl);

	switch (st) {
	case FNPU_STATUS_OK:
		cq_tail++;
		if (cq_room)
			cq_room--;
		break;
	case FNPU_STATUS_CQ_FULL:
		cq_room = 0;
		pending = 1;
		return st;
	default:
		/* The record could not be written (cannot happen with cpl in SRAM); the job still ends,
		 * or the ring would stall behind it. */
		log_str("fw: completion dropped\n");
		break;
	}
	pending = 0;
	mmio_write(FNPU_CORE_JOB_DONE, pending_status);
	mmio_write(FNPU_CORE_IRQ, FNPU_IRQ_COMPLETION);
	sq_head++;
	mmio_write(FNPU_CORE_SQ_HEAD, sq_head);
	return FNPU_STATUS_OK;
}

static void serve_ring(void)
{
	uint32_t tail;

	if (pending && retire_job() != FNPU_STATUS_OK)
		return;
	tail = mmio_read(FNPU_CORE_SQ_TAIL);
	while (sq_head != tail) {
		if (!cq_has_room())
			return;
		pending_status = job_run(sq_head, &cpl);
		if (retire_job() != FNPU_STATUS_OK)
			return;
		if (sq_head == tail)	/* caught up: the host may have produced more meanwhile */
			tail = mmio_read(FNPU_CORE_SQ_TAIL);
	}
}

int main(void)
{
	mmio_write(FNPU_CORE_FW_VERSION, FW_VERSION);
	mmio_write(FNPU_CORE_FW_ABI, (FNPU_HW_ABI_MAJOR << 16) | FNPU_HW_ABI_MINOR);
	mmio_write(FNPU_CORE_FW_READY, 1);
	log_str("flaxnpu-fw ready\n");
	for (;;) {
		mmio_write(FNPU_CORE_HEARTBEAT, ++heartbeat);
		serve_ring();
		cpu_idle();
	}
}
