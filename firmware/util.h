/* The C library pieces the compiler may call on its own (struct copies, zeroing). */
#ifndef FW_UTIL_H
#define FW_UTIL_H

#include <stddef.h>

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

#endif /* FW_UTIL_H */
