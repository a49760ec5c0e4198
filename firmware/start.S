/* Reset entry: set up gp and sp, copy .data, clear .bss, run main (which never returns). */
	.section .text.start, "ax"
	.globl _start
_start:
	.option push
	.option norelax		/* gp itself must not be relaxed against gp */
	la	gp, __global_pointer$
	.option pop
	la	sp, _stack_top

	la	a0, _data_start
	la	a1, _data_end
	la	a2, _data_lma
1:	bgeu	a0, a1, 2f
	lw	t0, 0(a2)
	sw	t0, 0(a0)
	addi	a0, a0, 4
	addi	a2, a2, 4
	j	1b

2:	la	a0, _bss_start
	la	a1, _bss_end
3:	bgeu	a0, a1, 4f
	sw	zero, 0(a0)
	addi	a0, a0, 4
	j	3b

4:	call	main
	/* main never returns; should it, park the core where the device model sees it idle. */
5:	wfi
	j	5b
