/*
 * Job checks in the contract's order -- seq, opcode, flags, reserved; for RUN: batch, seg_count, the
 * MMU's segment checks, the op stream's place in its segment -- then the op stream in chunks: DMA a
 * chunk of descriptors into SRAM, resolve each op (op_check.c) and kick the engines with it. The first
 * failure ends the job and names the op it happened at.
 */
#include "job.h"
#include "mmio.h"
#include "op_check.h"
#include "util.h"

/* Op descriptors fetched per DMA: fewer kicks per op against more bytes copied past a failing op. */
#define OP_CHUNK 32u

/* Buffers the units read and write through the KICK registers; all in SRAM. */
static struct fnpu_sq_entry sq;
static struct fnpu_seg_entry segs[FNPU_MAX_SEGMENTS];
static struct fnpu_op ops[OP_CHUNK];
static struct fnpu_sq_fetch_args fetch_args;
static struct fnpu_mmu_args mmu_args;
static struct fnpu_dma_args dma_args;

struct job_fail {
	uint32_t op_index;
	uint32_t info;
};

static FW_MUST_CHECK enum fnpu_status kick(uint32_t kick_offset, const void *arg, uint32_t *info)
{
	enum fnpu_status st = mmio_kick(kick_offset, arg);

	if (st != FNPU_STATUS_OK)
		*info = mmio_read(FNPU_CORE_STATUS_INFO);
	return st;
}

static FW_MUST_CHECK enum fnpu_status check_entry(uint32_t index, uint32_t *info)
{
	if (sq.seq != index) {
		*info = sq.seq;
		return FNPU_STATUS_JOB_SEQ;
	}
	switch (sq.opcode) {
	case FNPU_JOB_OP_RUN:
	case FNPU_JOB_OP_NOP:
		break;
	default:
		*info = sq.opcode;
		return FNPU_STATUS_JOB_OPCODE;
	}
	if (sq.flags) {
		*info = sq.flags;
		return FNPU_STATUS_JOB_FLAGS;
	}
	if (sq.reserved0 || sq.reserved1 || sq.reserved2) {
		*info = sq.reserved0 ? offsetof(struct fnpu_sq_entry, reserved0) :
			sq.reserved1 ? offsetof(struct fnpu_sq_entry, reserved1) :
				       offsetof(struct fnpu_sq_entry, reserved2);
		return FNPU_STATUS_JOB_RESERVED;
	}
	return FNPU_STATUS_OK;
}

/* batch, seg_count, segment table (by the MMU), and the op stream's range inside prog_seg. */
static FW_MUST_CHECK enum fnpu_status check_run(uint32_t *info)
{
	enum fnpu_status st;
	uint64_t end;

	if (sq.batch == 0) {
		*info = 0;
		return FNPU_STATUS_JOB_BATCH;
	}
	if (sq.seg_count == 0 || sq.seg_count > FNPU_MAX_SEGMENTS) {
		*info = sq.seg_count;
		return FNPU_STATUS_SEG_COUNT;
	}
	mmu_args.table = sq.seg_table;
	mmu_args.count = sq.seg_count;
	mmu_args.dst = (uint32_t)(uintptr_t)segs;
	st = kick(FNPU_CORE_MMU_KICK, &mmu_args, info);
	if (st != FNPU_STATUS_OK)
		return st;
	if (sq.prog_seg >= sq.seg_count) {
		*info = sq.prog_seg;
		return FNPU_STATUS_JOB_PROGRAM;
	}
	if (sq.op_count == 0) {
		*info = 0;
		return FNPU_STATUS_JOB_PROGRAM;
	}
	end = (uint64_t)sq.prog_offset + (uint64_t)sq.op_count * FNPU_OP_SIZE;
	if (end > segs[sq.prog_seg].size) {
		*info = sq.prog_offset;
		return FNPU_STATUS_JOB_PROGRAM;
	}
	return FNPU_STATUS_OK;
}

/* Run ops [first, first + n) that are in ops[]; *cycles accumulates, saturating. */
static FW_MUST_CHECK enum fnpu_status run_chunk(uint32_t first, uint32_t n, const struct op_job *job,
						uint32_t *cycles, struct job_fail *fail)
{
	for (uint32_t i = 0; i < n; i++) {
		enum fnpu_status st;
		uint32_t c;

		fail->op_index = first + i;
		st = op_resolve(&ops[i], job, &fail->info);
		if (st != FNPU_STATUS_OK)
			return st;
		st = kick(FNPU_CORE_ENG_KICK, &ops[i], &fail->info);
		if (st != FNPU_STATUS_OK)
			return st;
		c = mmio_read(FNPU_CORE_CYCLES);
		*cycles = *cycles + c < *cycles ? 0xffffffffu : *cycles + c;
	}
	return FNPU_STATUS_OK;
}

static FW_MUST_CHECK enum fnpu_status run_ops(uint32_t *cycles, struct job_fail *fail)
{
	const struct op_job job = { .batch = sq.batch, .seg_count = sq.seg_count, .segs = segs };

	for (uint32_t first = 0; first < sq.op_count; first += OP_CHUNK) {
		uint32_t n = sq.op_count - first < OP_CHUNK ? sq.op_count - first : OP_CHUNK;
		enum fnpu_status st;

		/* check_run() bounded prog_offset + op_count * OP_SIZE by a 32-bit size: no wrap here. */
		dma_args.seg = sq.prog_seg;
		dma_args.offset = sq.prog_offset + first * FNPU_OP_SIZE;
		dma_args.len = n * FNPU_OP_SIZE;
		dma_args.dst = (uint32_t)(uintptr_t)ops;
		fail->op_index = first;
		st = kick(FNPU_CORE_DMA_KICK, &dma_args, &fail->info);
		if (st != FNPU_STATUS_OK)
			return st;
		st = run_chunk(first, n, &job, cycles, fail);
		if (st != FNPU_STATUS_OK)
			return st;
	}
	return FNPU_STATUS_OK;
}

enum fnpu_status job_run(uint32_t index, struct fnpu_cq_entry *cpl)
{
	struct job_fail fail = { .op_index = FNPU_OP_NONE, .info = 0 };
	uint32_t cycles = 0;
	enum fnpu_status st;

	memset(cpl, 0, sizeof(*cpl));
	cpl->sq_seq = index;
	fetch_args.index = index;
	fetch_args.dst = (uint32_t)(uintptr_t)&sq;
	st = kick(FNPU_CORE_SQ_KICK, &fetch_args, &fail.info);
	if (st == FNPU_STATUS_OK) {
		cpl->job_id = sq.job_id;
		st = check_entry(index, &fail.info);
	}
	if (st == FNPU_STATUS_OK && sq.opcode == FNPU_JOB_OP_RUN) {
		st = check_run(&fail.info);
		if (st == FNPU_STATUS_OK)
			st = run_ops(&cycles, &fail);
	}
	cpl->status = st;
	cpl->op_index = st == FNPU_STATUS_OK ? FNPU_OP_NONE : fail.op_index;
	cpl->info = st == FNPU_STATUS_OK ? 0 : fail.info;
	cpl->cycles = cycles;
	return st;
}
