/* memcpy/memset for a freestanding build. The Makefile passes -fno-tree-loop-distribute-patterns so
 * that gcc does not turn these loops back into calls to themselves. */
#include <stdint.h>

#include "util.h"

void *memcpy(void *dst, const void *src, size_t n)
{
	uint8_t *d = dst;
	const uint8_t *s = src;

	if ((((uintptr_t)d | (uintptr_t)s | n) & 3) == 0) {
		uint32_t *dw = dst;
		const uint32_t *sw = src;

		for (size_t i = 0; i < n / 4; i++)
			dw[i] = sw[i];
		return dst;
	}
	for (size_t i = 0; i < n; i++)
		d[i] = s[i];
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	uint8_t *d = dst;

	if ((((uintptr_t)d | n) & 3) == 0) {
		uint32_t *dw = dst;
		uint32_t w = (uint8_t)c * 0x01010101u;

		for (size_t i = 0; i < n / 4; i++)
			dw[i] = w;
		return dst;
	}
	for (size_t i = 0; i < n; i++)
		d[i] = (uint8_t)c;
	return dst;
}
