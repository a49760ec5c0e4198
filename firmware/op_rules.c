/*
 * The per-opcode table behind op_check.c: which dims, operands and flags an opcode uses, what each params
 * word may hold, and how many elements each operand has. Element counts saturate at ELEMS_CAP: an
 * operand of 2^32 elements or more cannot match any 32-bit size, so the saturated count still fails
 * OP_SIZE, and no product is ever taken after it has wrapped.
 */
#include "op_rules.h"

#define ELEMS_CAP 0xffffffffull
#define MAX_RANK 6u

/* a * b for a, b <= ELEMS_CAP (the product fits 64 bits), saturated at ELEMS_CAP. */
static uint64_t mul(uint64_t a, uint64_t b)
{
	uint64_t p = a * b;

	return p > ELEMS_CAP ? ELEMS_CAP : p;
}

static uint64_t prod(const uint64_t *d, uint32_t n)
{
	uint64_t p = 1;

	for (uint32_t i = 0; i < n; i++)
		p = mul(p, d[i]);
	return p;
}

static uint64_t lo16(uint32_t v)
{
	return v & 0xffffu;
}

static uint64_t hi16(uint32_t v)
{
	return v >> 16;
}

/* Elements a BINARY operand holds under its broadcast mode (params checked already). */
static uint64_t bcast_elems(uint32_t bcast, const uint64_t *d)
{
	switch (bcast) {
	case FNPU_BCAST_FULL:
		return d[0] * d[1];
	case FNPU_BCAST_ROW:
		return d[1];
	case FNPU_BCAST_COL:
		return d[0];
	default:		/* SCALAR */
		return 1;
	}
}

/* src2 of MATMUL/CONV2D: the bias (n), or under QUANT the requant table (scale row, bias row). */
static uint64_t quant_table(const struct fnpu_op *op, uint64_t n)
{
	return (op->flags & FNPU_OP_FLAG_QUANT) ? 2 * n : n;
}

static enum fnpu_status matmul_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)nd;
	(void)op;
	(void)info;
	e[REF_SRC0] = d[0] * d[1];
	e[REF_SRC1] = d[1] * d[2];
	e[REF_SRC2] = quant_table(op, d[2]);
	e[REF_DST] = d[0] * d[2];
	return FNPU_STATUS_OK;
}

static enum fnpu_status binary_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)nd;
	(void)info;
	e[REF_SRC0] = bcast_elems(op->params[1], d);
	e[REF_SRC1] = bcast_elems(op->params[2], d);
	e[REF_DST] = d[0] * d[1];
	return FNPU_STATUS_OK;
}

/* src0 and dst of the same elements: UNARY (n), SOFTMAX (R, C), TRANSPOSE (its rank dims). */
static enum fnpu_status same_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)op;
	(void)info;
	e[REF_SRC0] = e[REF_DST] = prod(d, nd);
	return FNPU_STATUS_OK;
}

static enum fnpu_status reduce_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)nd;
	(void)op;
	(void)info;
	e[REF_SRC0] = d[0] * d[1];
	e[REF_DST] = d[0];
	return FNPU_STATUS_OK;
}

/* dims N,H,W,C,OH,OW; src1 is [KH, KW, C/groups, OC]. */
static enum fnpu_status conv2d_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)nd;
	uint32_t groups = op->params[5], oc = op->params[1];
	uint32_t c = (uint32_t)d[3];	/* <= MAX_DIM: 32-bit division, no libgcc call */

	if (c % groups || oc % groups) {
		*info = OP_FIELD(params[5]);
		return FNPU_STATUS_OP_PARAM;
	}
	e[REF_SRC0] = prod(d, 4);
	e[REF_SRC1] = mul(mul(mul(lo16(op->params[0]), hi16(op->params[0])), c / groups), oc);
	e[REF_SRC2] = quant_table(op, oc);
	e[REF_DST] = mul(mul(mul(d[0], d[4]), d[5]), oc);
	return FNPU_STATUS_OK;
}

static enum fnpu_status pool_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)nd;
	(void)op;
	(void)info;
	e[REF_SRC0] = prod(d, 4);
	e[REF_DST] = mul(mul(mul(d[0], d[4]), d[5]), d[3]);
	return FNPU_STATUS_OK;
}

static enum fnpu_status layernorm_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)nd;
	(void)op;
	(void)info;
	e[REF_SRC0] = e[REF_DST] = d[0] * d[1];
	e[REF_SRC1] = e[REF_SRC2] = d[1];
	return FNPU_STATUS_OK;
}

/* dims B,M,K,N; a transposed operand has the same element count. */
static enum fnpu_status bmm_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)nd;
	(void)op;
	(void)info;
	e[REF_SRC0] = mul(mul(d[0], d[1]), d[2]);
	e[REF_SRC1] = mul(mul(d[0], d[2]), d[3]);
	e[REF_DST] = mul(mul(d[0], d[1]), d[3]);
	return FNPU_STATUS_OK;
}

/* dims R,V,D: src0 the R row indices, src1 the [V, D] table. */
static enum fnpu_status gather_elems(const struct fnpu_op *op, const uint64_t *d, uint32_t nd,
				     uint64_t *e, uint32_t *info)
{
	(void)nd;
	(void)op;
	(void)info;
	e[REF_SRC0] = d[0];
	e[REF_SRC1] = d[1] * d[2];
	e[REF_DST] = d[0] * d[2];
	return FNPU_STATUS_OK;
}

#define SRC_DST (USES(REF_SRC0) | USES(REF_DST))
#define SRC2_DST (USES(REF_SRC0) | USES(REF_SRC1) | USES(REF_DST))
#define FUSED (FNPU_OP_FLAG_BIAS | FNPU_OP_FLAG_RESIDUAL | FNPU_OP_FLAG_QUANT)

static const struct op_rule rules[] = {
	[FNPU_OPCODE_MATMUL] = { 3, SRC2_DST, FUSED, 0, { 0, 0, 0, 0, 0, 0, 0, P_QSCALE }, matmul_elems },
	[FNPU_OPCODE_BINARY] = { 2, SRC2_DST, 0, 0, { FNPU_BINOP_POW, FNPU_BCAST_SCALAR, FNPU_BCAST_SCALAR },
				 binary_elems },
	[FNPU_OPCODE_UNARY] = { 1, SRC_DST, 0, 0, { FNPU_FUNC_ERF }, same_elems },
	[FNPU_OPCODE_SOFTMAX] = { 2, SRC_DST, 0, 0, { 0 }, same_elems },
	[FNPU_OPCODE_REDUCE] = { 2, SRC_DST, 0, 0, { FNPU_REDUCE_MEAN }, reduce_elems },
	[FNPU_OPCODE_CONV2D] = { 6, SRC2_DST, FUSED, 0,
				 { P_PAIR, P_DIM, P_PAIR, P_ANY, P_PAIR, P_NONZERO, 0, P_QSCALE }, conv2d_elems },
	[FNPU_OPCODE_POOL] = { 6, SRC_DST, FNPU_OP_FLAG_QUANT, 0, { FNPU_POOL_AVG, P_PAIR, P_PAIR, P_ANY }, pool_elems },
	[FNPU_OPCODE_LAYERNORM] = { 2, SRC2_DST | USES(REF_SRC2), 0, 0, { P_EPS }, layernorm_elems },
	[FNPU_OPCODE_BMM] = { 4, SRC2_DST, 0, 0, { 3, P_ALPHA }, bmm_elems },
	[FNPU_OPCODE_GATHER] = { 3, SRC2_DST, 0, USES(REF_SRC0), { 0 }, gather_elems },
	[FNPU_OPCODE_TRANSPOSE] = { 0, SRC_DST, 0, 0, { P_PERM, P_RANK }, same_elems },
	[FNPU_OPCODE_CONVERT] = { 1, SRC_DST, 0, 0, { P_SCALE, FNPU_CONVERT_DEQUANTIZE }, same_elems },
};

const struct op_rule *op_rule_of(uint32_t opcode)
{
	if (opcode >= FW_ARRAY_SIZE(rules) || !rules[opcode].elems)
		return 0;
	return &rules[opcode];
}

uint32_t op_ndims(const struct fnpu_op *op, const struct op_rule *rule)
{
	if (rule->ndims)
		return rule->ndims;
	return op->params[1] >= 1 && op->params[1] <= MAX_RANK ? op->params[1] : MAX_RANK;
}

uint32_t op_ref_dtype(const struct fnpu_op *op, const struct op_rule *rule, uint32_t ref)
{
	if (rule->i32 & USES(ref))
		return FNPU_DTYPE_I32;
	if (op->opcode == FNPU_OPCODE_CONVERT) {
		uint32_t i8_src = op->params[1] == FNPU_CONVERT_DEQUANTIZE;

		return (ref == REF_SRC0) == i8_src ? FNPU_DTYPE_I8 : FNPU_DTYPE_F32;
	}
	if (op->flags & FNPU_OP_FLAG_QUANT) {
		if (ref == REF_SRC0 || ref == REF_SRC1 || (ref == REF_DST && op->params[FNPU_QSCALE_PARAM]))
			return FNPU_DTYPE_I8;
		if (ref == REF_DST && op->opcode == FNPU_OPCODE_POOL)
			return FNPU_DTYPE_I8;
	}
	return FNPU_DTYPE_F32;
}

/* perm (4 bits per axis) is a permutation of 0..rank-1 with nothing above its rank fields. */
static uint32_t perm_ok(uint32_t perm, uint32_t rank)
{
	uint32_t seen = 0;

	if (rank < 1 || rank > MAX_RANK)
		return 1;	/* the rank word itself is refused */
	if (rank < 8 && (perm >> (4 * rank)))
		return 0;
	for (uint32_t i = 0; i < rank; i++) {
		uint32_t axis = (perm >> (4 * i)) & 0xfu;

		if (axis >= rank || (seen & (1u << axis)))
			return 0;
		seen |= 1u << axis;
	}
	return 1;
}

static uint32_t param_ok(uint32_t rule, uint32_t v, const struct fnpu_op *op)
{
	switch (rule) {
	case P_PAIR:
		return lo16(v) && hi16(v);
	case P_ANY:
		return 1;
	case P_DIM:
		return v >= 1 && v <= FNPU_MAX_DIM;
	case P_NONZERO:
		return v != 0;
	case P_EPS:
		return v < 0x7f800000u;
	case P_ALPHA:
		return (v & 0x7fffffffu) && (v & 0x7f800000u) != 0x7f800000u;
	case P_PERM:
		return perm_ok(v, op->params[1]);
	case P_RANK:
		return v >= 1 && v <= MAX_RANK;
	case P_SCALE:
		return v && v < 0x7f800000u;
	case P_QSCALE:
		return !v || ((op->flags & FNPU_OP_FLAG_QUANT) && v < 0x7f800000u);
	default:
		return v <= rule;
	}
}

enum fnpu_status op_check_params(const struct fnpu_op *op, const struct op_rule *rule, uint32_t *info)
{
	for (uint32_t i = 0; i < FW_ARRAY_SIZE(op->params); i++) {
		if (!param_ok(rule->param[i], op->params[i], op)) {
			*info = OP_FIELD(params) + 4 * i;
			return FNPU_STATUS_OP_PARAM;
		}
	}
	return FNPU_STATUS_OK;
}
