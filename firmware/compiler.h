/* Attributes the firmware uses everywhere. */
#ifndef FW_COMPILER_H
#define FW_COMPILER_H

/* Every fallible function returns enum fnpu_status; dropping one is a build error (-Werror). */
#define FW_MUST_CHECK __attribute__((warn_unused_result))
#define FW_NORETURN __attribute__((noreturn))
#define FW_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif /* FW_COMPILER_H */
