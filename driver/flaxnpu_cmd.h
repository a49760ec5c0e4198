/* SPDX-License-Identifier: GPL-2.0 */
/* flaxnpu: the write()/read() record protocol and the job-related ioctls. */
#ifndef FLAXNPU_CMD_H
#define FLAXNPU_CMD_H

#include <linux/poll.h>

#include "flaxnpu_drv.h"

ssize_t flaxnpu_cmd_write(struct flaxnpu_ctx *ctx, const char __user *buf, size_t count);
ssize_t flaxnpu_cmd_read(struct flaxnpu_ctx *ctx, char __user *buf, size_t count, bool nonblock);
__poll_t flaxnpu_cmd_poll(struct flaxnpu_ctx *ctx, struct file *file, poll_table *wait);
int flaxnpu_cmd_model_unload(struct flaxnpu_ctx *ctx, struct fnpu_model_unload *arg);
int flaxnpu_cmd_wait(struct flaxnpu_ctx *ctx, struct fnpu_wait *arg);
void flaxnpu_cmd_ctx_close(struct flaxnpu_ctx *ctx);

#endif
