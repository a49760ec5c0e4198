/*
 * Per-op checks in the order the hardware contract lists them (the engines check the same things again):
 * opcode, act, flags and scale bits, reserved fields, params, dims after scaling, element counts (which
 * may refuse a params/dims combination), then each used operand (segment, dtype, flags, rights, bounds,
 * size), then the unused operands. What each opcode uses comes from op_rules.c. All size arithmetic is
 * done in 64 bits: a 32-bit field times the batch cannot wrap there, so no product is ever checked after
 * it has overflowed.
 */
#include "op_check.h"
#include "op_rules.h"

static FW_MUST_CHECK enum fnpu_status check_header(const struct fnpu_op *op, const struct op_rule *rule,
						   uint32_t ndims, uint32_t *info)
{
	if (op->act > FNPU_FUNC_ERF) {
		*info = op->act;
		return FNPU_STATUS_OP_FUNC;
	}
	/* QUANT's src2 is the requant table, which already holds the bias */
	if ((op->flags & ~rule->flags) ||
	    ((op->flags & FNPU_OP_FLAG_QUANT) && (op->flags & FNPU_OP_FLAG_BIAS))) {
		*info = op->flags;
		return FNPU_STATUS_OP_FLAGS;
	}
	/* an int8 POOL takes the max of quantized values, the one pooling that commutes with the scale */
	if ((op->flags & FNPU_OP_FLAG_QUANT) && op->opcode == FNPU_OPCODE_POOL) {
		if (op->act != FNPU_FUNC_NONE) {
			*info = op->act;
			return FNPU_STATUS_OP_FUNC;
		}
		if (op->params[0] != FNPU_POOL_MAX) {
			*info = OP_FIELD(params);
			return FNPU_STATUS_OP_PARAM;
		}
	}
	if (op->scale_mask & ~((1u << ndims) - 1)) {
		*info = op->scale_mask;
		return FNPU_STATUS_OP_FLAGS;
	}
	if (op->reserved0) {
		*info = OP_FIELD(reserved0);
		return FNPU_STATUS_OP_RESERVED;
	}
	if (op->reserved1) {
		*info = OP_FIELD(reserved1);
		return FNPU_STATUS_OP_RESERVED;
	}
	return op_check_params(op, rule, info);
}

/* Scale the used dims by the batch (where scale_mask says so) and check them; unused dims must be 0. */
static FW_MUST_CHECK enum fnpu_status check_dims(const struct fnpu_op *op, uint32_t ndims, uint32_t batch,
						 uint64_t scaled[6], uint32_t *info)
{
	for (uint32_t i = 0; i < FW_ARRAY_SIZE(op->dims); i++) {
		uint64_t d = op->dims[i];

		if (op->scale_mask & (1u << i))
			d *= batch;
		scaled[i] = d;
		if (i < ndims ? (d == 0 || d > FNPU_MAX_DIM) : d != 0) {
			*info = OP_FIELD(dims) + 4 * i;
			return FNPU_STATUS_OP_DIMS;
		}
	}
	return FNPU_STATUS_OK;
}

/* One used operand; on success *offset and *size hold its scaled range. */
static FW_MUST_CHECK enum fnpu_status check_ref(const struct fnpu_tensor_ref *ref, uint32_t is_dst,
						uint32_t dtype, uint64_t elems, const struct op_job *job,
						uint64_t *offset, uint64_t *size, uint32_t *info)
{
	const struct fnpu_seg_entry *seg;
	uint64_t scale;

	if (ref->seg >= job->seg_count) {
		*info = ref->seg;
		return FNPU_STATUS_OP_SEGMENT;
	}
	if (ref->dtype != dtype) {
		*info = ref->dtype;
		return FNPU_STATUS_OP_DTYPE;
	}
	if (ref->flags & ~FNPU_REF_FLAG_SCALED) {
		*info = ref->flags;
		return FNPU_STATUS_OP_FLAGS;
	}
	seg = &job->segs[ref->seg];
	if (!(seg->flags & (is_dst ? FNPU_SEG_FLAG_WRITE : FNPU_SEG_FLAG_READ))) {
		*info = ref->seg;
		return FNPU_STATUS_OP_RIGHTS;
	}
	scale = (ref->flags & FNPU_REF_FLAG_SCALED) ? job->batch : 1;
	*offset = ref->offset * scale;
	*size = ref->size * scale;
	if (*offset > seg->size || *size > seg->size - *offset) {
		*info = *offset > 0xffffffffu ? 0xffffffffu : (uint32_t)*offset;
		return FNPU_STATUS_OP_BOUNDS;
	}
	/* elems is at most 2^32 - 1 (op_rules.c saturates), so elems * 4 cannot wrap */
	if (*size != elems * (dtype == FNPU_DTYPE_I8 ? 1 : 4)) {
		*info = (uint32_t)*size;	/* inside a 32-bit segment, so it fits */
		return FNPU_STATUS_OP_SIZE;
	}
	return FNPU_STATUS_OK;
}

static uint32_t ref_is_zero(const struct fnpu_tensor_ref *ref)
{
	return !ref->offset && !ref->size && !ref->seg && !ref->dtype && !ref->flags;
}

enum fnpu_status op_resolve(struct fnpu_op *op, const struct op_job *job, uint32_t *info)
{
	struct fnpu_tensor_ref *refs[REF_COUNT] = { &op->src0, &op->src1, &op->src2, &op->dst, &op->src3 };
	uint64_t offsets[REF_COUNT], sizes[REF_COUNT], elems[REF_COUNT];
	uint64_t dims[6];
	const struct op_rule *rule = op_rule_of(op->opcode);
	enum fnpu_status st;
	uint32_t ndims, used;

	if (!rule) {
		*info = op->opcode;
		return FNPU_STATUS_OP_OPCODE;
	}
	ndims = op_ndims(op, rule);
	st = check_header(op, rule, ndims, info);
	if (st != FNPU_STATUS_OK)
		return st;
	st = check_dims(op, ndims, job->batch, dims, info);
	if (st != FNPU_STATUS_OK)
		return st;
	st = rule->elems(op, dims, ndims, elems, info);
	if (st != FNPU_STATUS_OK)
		return st;
	elems[REF_SRC3] = elems[REF_DST];
	used = rule->refs;
	/* the requant table of an int8 MATMUL/CONV2D (an int8 POOL has none) */
	if ((op->flags & FNPU_OP_FLAG_BIAS) || ((op->flags & FNPU_OP_FLAG_QUANT) && op->opcode != FNPU_OPCODE_POOL))
		used |= USES(REF_SRC2);
	if (op->flags & FNPU_OP_FLAG_RESIDUAL)
		used |= USES(REF_SRC3);
	for (uint32_t r = 0; r < REF_COUNT; r++) {
		uint32_t dtype = op_ref_dtype(op, rule, r);

		if (!(used & USES(r)))
			continue;
		st = check_ref(refs[r], r == REF_DST, dtype, elems[r], job, &offsets[r], &sizes[r], info);
		if (st != FNPU_STATUS_OK)
			return st;
	}
	for (uint32_t r = 0; r < REF_COUNT; r++) {
		if (!(used & USES(r)) && !ref_is_zero(refs[r])) {
			*info = (uint32_t)((const uint8_t *)refs[r] - (const uint8_t *)op);
			return FNPU_STATUS_OP_RESERVED;
		}
	}

	/* Every check passed: only now rewrite the op. The bounds checks above keep every scaled
	 * offset and size within a 32-bit segment, and every dim within MAX_DIM. */
	op->scale_mask = 0;
	for (uint32_t i = 0; i < FW_ARRAY_SIZE(op->dims); i++)
		op->dims[i] = (uint32_t)dims[i];
	for (uint32_t r = 0; r < REF_COUNT; r++) {
		if (!(used & USES(r)))
			continue;
		refs[r]->offset = (uint32_t)offsets[r];
		refs[r]->size = (uint32_t)sizes[r];
		refs[r]->flags = 0;
	}
	return FNPU_STATUS_OK;
}
