/* Per-op validation and batch scaling: an op descriptor from the program in, a resolved op out. */
#ifndef FW_OP_CHECK_H
#define FW_OP_CHECK_H

#include "fnpu_hw.h"
#include "fnpu_prog.h"
#include "compiler.h"

/* What the checks need to know about the running job. */
struct op_job {
	uint32_t batch;				/* >= 1 */
	uint32_t seg_count;			/* entries in segs, 1..FNPU_MAX_SEGMENTS */
	const struct fnpu_seg_entry *segs;	/* the table as the MMU checked it */
};

/*
 * Check op against the job, then apply the batch to it in place (dims and SCALED refs multiplied,
 * scale_mask and REF_FLAG_SCALED cleared). The op is left untouched unless every check passes.
 * On failure *info says what was wrong:
 *   OP_OPCODE, OP_FUNC, OP_FLAGS, OP_DTYPE, OP_SEGMENT, OP_RIGHTS: the offending value
 *   OP_RESERVED, OP_PARAM, OP_DIMS: byte offset of the offending field in the op descriptor
 *   OP_BOUNDS: the operand's offset after scaling (0xffffffff if that overflows 32 bits)
 *   OP_SIZE: the operand's size after scaling
 */
FW_MUST_CHECK enum fnpu_status op_resolve(struct fnpu_op *op, const struct op_job *job, uint32_t *info);

#endif /* FW_OP_CHECK_H */
