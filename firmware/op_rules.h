/* What each opcode uses: dims, operands, flags, the range of every params word, operand element counts. */
#ifndef FW_OP_RULES_H
#define FW_OP_RULES_H

#include "fnpu_hw.h"
#include "fnpu_prog.h"
#include "compiler.h"

/* Operands in the order they are checked: descriptor order, src3 (at the end of the op) last. */
enum { REF_SRC0, REF_SRC1, REF_SRC2, REF_DST, REF_SRC3, REF_COUNT };

#define USES(r) (1u << (r))
#define OP_FIELD(field) ((uint32_t)offsetof(struct fnpu_op, field))

/* Rule for one params word: 0..P_KINDS-1 is the largest allowed value (0: the word must be 0),
 * P_KINDS and up name a check. */
enum param_rule {
	P_KINDS = 0x80,
	P_PAIR = P_KINDS,	/* two u16 halves, each >= 1: kernel size, stride, dilation */
	P_ANY,			/* any value: top/left padding */
	P_DIM,			/* 1..MAX_DIM: CONV2D's OC */
	P_NONZERO,		/* >= 1: CONV2D's groups (that it divides C and OC is checked with the dims) */
	P_EPS,			/* float32 bits, +0 or positive and finite */
	P_ALPHA,		/* float32 bits, finite and not zero */
	P_PERM,			/* TRANSPOSE: a permutation of 0..rank-1, 4 bits per axis, higher bits 0 */
	P_RANK,			/* TRANSPOSE: 1..6 */
	P_SCALE,		/* float32 bits, positive and finite: CONVERT's scale */
	P_QSCALE,		/* 0 (F32 dst), or with OP_FLAG_QUANT a positive finite float32: the I8 dst's scale */
};

/*
 * Element counts of the used operands from the scaled dims (ndims of them) (src3, when used, has dst's; the caller fills
 * it in). May refuse a params/dims combination with OP_PARAM and *info = the params word's offset.
 */
typedef enum fnpu_status (*op_elems_fn)(const struct fnpu_op *op, const uint64_t *d, uint32_t ndims,
					uint64_t *elems, uint32_t *info);

struct op_rule {
	uint8_t ndims;		/* dims used; 0: params[1] says (TRANSPOSE's rank) */
	uint8_t refs;		/* USES() of the operands every such op uses */
	uint8_t flags;		/* OP_FLAG_* allowed: BIAS adds src2, RESIDUAL adds src3 */
	uint8_t i32;		/* USES() of the operands of dtype I32; op_ref_dtype() says the others' */
	uint8_t param[8];	/* enum param_rule per params word */
	op_elems_fn elems;
};

/* The rule of a known opcode, else NULL. */
const struct op_rule *op_rule_of(uint32_t opcode);

/* Dims the op uses (TRANSPOSE: its rank, or 6 while params[1] is no rank; the params check refuses it). */
uint32_t op_ndims(const struct fnpu_op *op, const struct op_rule *rule);

/* DTYPE_* operand ref must have: I32 per the rule, I8 per CONVERT's direction or QUANT, else F32 (params checked). */
uint32_t op_ref_dtype(const struct fnpu_op *op, const struct op_rule *rule, uint32_t ref);

/* Every params word against its rule, in index order; *info = the byte offset of the first bad word. */
FW_MUST_CHECK enum fnpu_status op_check_params(const struct fnpu_op *op, const struct op_rule *rule,
					       uint32_t *info);

#endif /* FW_OP_RULES_H */
