/*
 * Per-op checks in the order the hardware contract lists them (the engines check the same things again):
 * opcode, act, flags and scale bits, reserved fields, params, dims after scaling, then each used operand
 * (segment, dtype, flags, rights, bounds, size), then the unused operands. All size arithmetic is done
 * in 64 bits: a 32-bit field times the batch cannot wrap there, so no product is ever checked after it
 * has overflowed.
 */
#include "op_check.h"

enum { REF_SRC0, REF_SRC1, REF_SRC2, REF_DST, REF_COUNT };

#define USES(r) (1u << (r))
#define OP_FIELD(field) ((uint32_t)offsetof(struct fnpu_op, field))

/* What an opcode uses: how many dims, which operands (MATMUL's src2 only with BIAS), the largest
 * value of each params word (0: the word must be zero). Indexed by opcode. */
struct op_shape {
	uint8_t ndims;
	uint8_t refs;			/* USES() bits */
	uint8_t param_max[8];
};

static const struct op_shape shapes[] = {
	[FNPU_OPCODE_MATMUL] = { 3, USES(REF_SRC0) | USES(REF_SRC1) | USES(REF_DST), { 0 } },
	[FNPU_OPCODE_BINARY] = { 2, USES(REF_SRC0) | USES(REF_SRC1) | USES(REF_DST),
				 { FNPU_BINOP_POW, FNPU_BCAST_SCALAR, FNPU_BCAST_SCALAR } },
	[FNPU_OPCODE_UNARY] = { 1, USES(REF_SRC0) | USES(REF_DST), { FNPU_FUNC_ERF } },
	[FNPU_OPCODE_SOFTMAX] = { 2, USES(REF_SRC0) | USES(REF_DST), { 0 } },
	[FNPU_OPCODE_REDUCE] = { 2, USES(REF_SRC0) | USES(REF_DST), { FNPU_REDUCE_MIN } },
};

static FW_MUST_CHECK enum fnpu_status op_shape_of(const struct fnpu_op *op, struct op_shape *shape)
{
	if (op->opcode == 0 || op->opcode >= FW_ARRAY_SIZE(shapes))
		return FNPU_STATUS_OP_OPCODE;
	*shape = shapes[op->opcode];
	if (op->opcode == FNPU_OPCODE_MATMUL && (op->flags & FNPU_OP_FLAG_BIAS))
		shape->refs |= USES(REF_SRC2);
	return FNPU_STATUS_OK;
}

/* Elements a BINARY operand holds under its broadcast mode (params checked already). */
static FW_MUST_CHECK enum fnpu_status bcast_elems(uint32_t bcast, uint64_t rows, uint64_t cols,
						  uint64_t *elems)
{
	switch (bcast) {
	case FNPU_BCAST_FULL:
		*elems = rows * cols;
		return FNPU_STATUS_OK;
	case FNPU_BCAST_ROW:
		*elems = cols;
		return FNPU_STATUS_OK;
	case FNPU_BCAST_COL:
		*elems = rows;
		return FNPU_STATUS_OK;
	case FNPU_BCAST_SCALAR:
		*elems = 1;
		return FNPU_STATUS_OK;
	default:
		return FNPU_STATUS_OP_PARAM;
	}
}

/* Element count of every used operand, from the scaled dims (each <= MAX_DIM, so products fit). */
static FW_MUST_CHECK enum fnpu_status op_elems(const struct fnpu_op *op, const uint64_t *d,
					       uint64_t elems[REF_COUNT], uint32_t *info)
{
	enum fnpu_status st;

	switch (op->opcode) {
	case FNPU_OPCODE_MATMUL:
		elems[REF_SRC0] = d[0] * d[1];
		elems[REF_SRC1] = d[1] * d[2];
		elems[REF_SRC2] = d[2];
		elems[REF_DST] = d[0] * d[2];
		return FNPU_STATUS_OK;
	case FNPU_OPCODE_BINARY:
		st = bcast_elems(op->params[1], d[0], d[1], &elems[REF_SRC0]);
		if (st == FNPU_STATUS_OK)
			st = bcast_elems(op->params[2], d[0], d[1], &elems[REF_SRC1]);
		if (st != FNPU_STATUS_OK) {
			*info = OP_FIELD(params[1]);
			return st;
		}
		elems[REF_DST] = d[0] * d[1];
		return FNPU_STATUS_OK;
	case FNPU_OPCODE_UNARY:
		elems[REF_SRC0] = d[0];
		elems[REF_DST] = d[0];
		return FNPU_STATUS_OK;
	case FNPU_OPCODE_SOFTMAX:
		elems[REF_SRC0] = d[0] * d[1];
		elems[REF_DST] = d[0] * d[1];
		return FNPU_STATUS_OK;
	case FNPU_OPCODE_REDUCE:
		elems[REF_SRC0] = d[0] * d[1];
		elems[REF_DST] = d[0];
		return FNPU_STATUS_OK;
	default:
		*info = op->opcode;
		return FNPU_STATUS_OP_OPCODE;
	}
}

static FW_MUST_CHECK enum fnpu_status check_header(const struct fnpu_op *op, const struct op_shape *shape,
						   uint32_t *info)
{
	if (op->act > FNPU_FUNC_ERF) {
		*info = op->act;
		return FNPU_STATUS_OP_FUNC;
	}
	if ((op->flags & ~FNPU_OP_FLAG_BIAS) ||
	    ((op->flags & FNPU_OP_FLAG_BIAS) && op->opcode != FNPU_OPCODE_MATMUL)) {
		*info = op->flags;
		return FNPU_STATUS_OP_FLAGS;
	}
	if (op->scale_mask & ~((1u << shape->ndims) - 1)) {
		*info = op->scale_mask;
		return FNPU_STATUS_OP_FLAGS;
	}
	if (op->reserved0) {
		*info = OP_FIELD(reserved0);
		return FNPU_STATUS_OP_RESERVED;
	}
	for (uint32_t i = 0; i < FW_ARRAY_SIZE(op->reserved1); i++) {
		if (op->reserved1[i]) {
			*info = OP_FIELD(reserved1) + 4 * i;
			return FNPU_STATUS_OP_RESERVED;
		}
	}
	for (uint32_t i = 0; i < FW_ARRAY_SIZE(op->params); i++) {
		if (op->params[i] > shape->param_max[i]) {
			*info = OP_FIELD(params) + 4 * i;
			return FNPU_STATUS_OP_PARAM;
		}
	}
	return FNPU_STATUS_OK;
}

/* Scale the used dims by the batch (where scale_mask says so) and check them; unused dims must be 0. */
static FW_MUST_CHECK enum fnpu_status check_dims(const struct fnpu_op *op, const struct op_shape *shape,
						 uint32_t batch, uint64_t scaled[6], uint32_t *info)
{
	for (uint32_t i = 0; i < FW_ARRAY_SIZE(op->dims); i++) {
		uint64_t d = op->dims[i];

		if (op->scale_mask & (1u << i))
			d *= batch;
		scaled[i] = d;
		if (i < shape->ndims ? (d == 0 || d > FNPU_MAX_DIM) : d != 0) {
			*info = OP_FIELD(dims) + 4 * i;
			return FNPU_STATUS_OP_DIMS;
		}
	}
	return FNPU_STATUS_OK;
}

/* One used operand; on success *offset and *size hold its scaled range. */
static FW_MUST_CHECK enum fnpu_status check_ref(const struct fnpu_tensor_ref *ref, uint32_t is_dst,
						uint64_t elems, const struct op_job *job,
						uint64_t *offset, uint64_t *size, uint32_t *info)
{
	const struct fnpu_seg_entry *seg;
	uint64_t scale;

	if (ref->seg >= job->seg_count) {
		*info = ref->seg;
		return FNPU_STATUS_OP_SEGMENT;
	}
	if (ref->dtype != FNPU_DTYPE_F32) {
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
	if (*size != elems * sizeof(float)) {
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
	struct fnpu_tensor_ref *refs[REF_COUNT] = { &op->src0, &op->src1, &op->src2, &op->dst };
	uint64_t offsets[REF_COUNT], sizes[REF_COUNT], elems[REF_COUNT];
	uint64_t dims[6];
	struct op_shape shape;
	enum fnpu_status st;

	st = op_shape_of(op, &shape);
	if (st != FNPU_STATUS_OK) {
		*info = op->opcode;
		return st;
	}
	st = check_header(op, &shape, info);
	if (st != FNPU_STATUS_OK)
		return st;
	st = check_dims(op, &shape, job->batch, dims, info);
	if (st != FNPU_STATUS_OK)
		return st;
	st = op_elems(op, dims, elems, info);
	if (st != FNPU_STATUS_OK)
		return st;
	for (uint32_t r = 0; r < REF_COUNT; r++) {
		if (!(shape.refs & USES(r)))
			continue;
		st = check_ref(refs[r], r == REF_DST, elems[r], job, &offsets[r], &sizes[r], info);
		if (st != FNPU_STATUS_OK)
			return st;
	}
	for (uint32_t r = 0; r < REF_COUNT; r++) {
		if (!(shape.refs & USES(r)) && !ref_is_zero(refs[r])) {
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
		if (!(shape.refs & USES(r)))
			continue;
		refs[r]->offset = (uint32_t)offsets[r];
		refs[r]->size = (uint32_t)sizes[r];
		refs[r]->flags = 0;
	}
	return FNPU_STATUS_OK;
}
