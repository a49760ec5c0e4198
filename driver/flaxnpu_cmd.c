// SPDX-License-Identifier: GPL-2.0
/*
 * flaxnpu: the write()/read() record protocol (docs/uapi.md).
 *
 * write() takes whole command records; each is checked completely before
 * anything is allocated or queued, so a malformed record (-EINVAL) leaves
 * no trace. Records before a failing one in the same write() are processed
 * and counted: write() then returns their length (a short write), and the
 * failing record's error comes back from the next write().
 *
 * read() returns whole response records, as many as fit. A buffer too small
 * for the next record fails with -EINVAL and the record stays queued.
 */
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "flaxnpu_bo.h"
#include "flaxnpu_cmd.h"
#include "flaxnpu_job.h"

#define FLAXNPU_EXEC_FLAGS (FNPU_EXEC_FLAG_INPUT_BO | FNPU_EXEC_FLAG_OUTPUT_BO | \
			    FNPU_EXEC_FLAG_ARENA_BO | FNPU_EXEC_FLAG_NOP | \
			    FNPU_EXEC_FLAG_OP_RANGE)

static void flaxnpu_cmd_queue(struct flaxnpu_ctx *ctx, struct flaxnpu_resp *resp)
{
	spin_lock(&ctx->resp_lock);
	list_add_tail(&resp->node, &ctx->resps);
	spin_unlock(&ctx->resp_lock);
	wake_up_interruptible_all(&ctx->wq);
}

static int flaxnpu_cmd_load_model(struct flaxnpu_ctx *ctx, const char __user *ubuf, u32 size)
{
	struct fnpu_cmd_load_model c;
	struct flaxnpu_model *model;
	struct flaxnpu_resp *resp;
	u32 handle;
	int ret;

	if (size < sizeof(c) || copy_from_user(&c, ubuf, sizeof(c)))
		return size < sizeof(c) ? -EINVAL : -EFAULT;
	if (c.flags || c.reserved || !c.image_size || c.image_size > FNPU_MAX_BO_SIZE)
		return -EINVAL;
	if (size != sizeof(c) + ALIGN((u64)c.image_size, FNPU_RECORD_ALIGN))
		return -EINVAL;
	if (!c.op_count || (u64)c.op_count * FNPU_OP_SIZE > c.image_size)
		return -EINVAL;

	resp = kzalloc(sizeof(*resp), GFP_KERNEL);
	model = kzalloc(sizeof(*model), GFP_KERNEL);
	if (!resp || !model) {
		ret = -ENOMEM;
		goto err;
	}
	kref_init(&model->ref);
	model->image_size = c.image_size;
	model->op_count = c.op_count;
	model->image = flaxnpu_bo_alloc(ctx->fdev, c.image_size);
	if (IS_ERR(model->image)) {
		ret = PTR_ERR(model->image);
		model->image = NULL;
		goto err;
	}
	ret = flaxnpu_bo_copy_from_user(model->image, ubuf + sizeof(c), c.image_size);
	if (ret)
		goto err;
	ret = xa_alloc_cyclic(&ctx->models, &handle, model, XA_LIMIT(1, FLAXNPU_MAX_HANDLE),
			      &ctx->next_model, GFP_KERNEL);
	if (ret < 0)
		goto err;
	resp->type = FNPU_RESP_MODEL;
	resp->tag = c.hdr.tag;
	resp->handle = handle;
	flaxnpu_cmd_queue(ctx, resp);
	return 0;
err:
	flaxnpu_model_put(model);
	kfree(resp);
	return ret == -EBUSY ? -ENOSPC : ret;
}

/* One of the job's INPUT/OUTPUT/ARENA segments: the caller's BO or driver memory. */
static int flaxnpu_cmd_seg(struct flaxnpu_ctx *ctx, struct flaxnpu_job *job, int seg,
			   u32 size, bool use_bo, u32 handle)
{
	struct flaxnpu_bo *bo;

	/* The device refuses empty segments; a program that uses none still names it. */
	job->seg_size[seg] = max_t(u32, size, FNPU_ALIGN);
	if (!use_bo) {
		bo = flaxnpu_bo_alloc(ctx->fdev, job->seg_size[seg]);
		if (IS_ERR(bo))
			return PTR_ERR(bo);
		job->bo[seg] = bo;
		return 0;
	}
	bo = xa_load(&ctx->bos, handle);
	if (!bo)
		return -ENOENT;
	if (job->seg_size[seg] > bo->size)
		return -EINVAL;
	kref_get(&bo->ref);
	job->bo[seg] = bo;
	return 0;
}

/* Queue a job, answer with its handle; on failure the job and response are freed. */
static int flaxnpu_cmd_queue_job(struct flaxnpu_ctx *ctx, struct flaxnpu_job *job,
				 struct flaxnpu_resp *resp, u64 tag)
{
	int ret;

	ret = xa_alloc_cyclic(&ctx->jobs, &job->handle, job, XA_LIMIT(1, FLAXNPU_MAX_HANDLE),
			      &ctx->next_job, GFP_KERNEL);
	if (ret < 0)
		goto err;
	ret = flaxnpu_job_submit(ctx->fdev, job);
	if (ret) {
		xa_erase(&ctx->jobs, job->handle);
		goto err;
	}
	ctx->jobs_open++;
	resp->type = FNPU_RESP_JOB;
	resp->tag = tag;
	resp->handle = job->handle;
	flaxnpu_cmd_queue(ctx, resp);
	return 0;
err:
	flaxnpu_job_put(job);
	kfree(resp);
	return ret;
}

/* A job and the response it will complete into, within the context's limit on open jobs. */
static int flaxnpu_cmd_new_job(struct flaxnpu_ctx *ctx, struct flaxnpu_job **job,
			       struct flaxnpu_resp **resp)
{
	if (ctx->jobs_open >= FNPU_MAX_JOBS)
		return -EBUSY;
	*resp = kzalloc(sizeof(**resp), GFP_KERNEL);
	*job = flaxnpu_job_alloc(ctx);
	if (!*resp || !*job) {
		flaxnpu_job_put(*job);
		kfree(*resp);
		return -ENOMEM;
	}
	return 0;
}

/* A NOP job measures the round trip through the ring and the firmware, with no data at all. */
static int flaxnpu_cmd_execute_nop(struct flaxnpu_ctx *ctx, const struct fnpu_cmd_execute *c)
{
	struct flaxnpu_resp *resp;
	struct flaxnpu_job *job;
	int ret;

	if (c->flags != FNPU_EXEC_FLAG_NOP || c->model || c->batch != 1 || c->input_size ||
	    c->output_size || c->arena_size || c->input_bo || c->output_bo || c->arena_bo)
		return -EINVAL;
	ret = flaxnpu_cmd_new_job(ctx, &job, &resp);
	if (ret)
		return ret;
	job->batch = 1;
	job->flags = c->flags;
	return flaxnpu_cmd_queue_job(ctx, job, resp, c->hdr.tag);
}

static int flaxnpu_cmd_execute(struct flaxnpu_ctx *ctx, const char __user *ubuf, u32 size)
{
	struct fnpu_cmd_execute c;
	struct flaxnpu_model *model;
	struct flaxnpu_resp *resp;
	struct flaxnpu_job *job;
	u64 payload;
	int ret;

	if (size < sizeof(c) || copy_from_user(&c, ubuf, sizeof(c)))
		return size < sizeof(c) ? -EINVAL : -EFAULT;
	if (c.flags & ~FLAXNPU_EXEC_FLAGS || c.reserved || !c.batch)
		return -EINVAL;
	if (!(c.flags & FNPU_EXEC_FLAG_OP_RANGE) && (c.first_op || c.op_count))
		return -EINVAL;
	if (c.input_size > FNPU_MAX_BO_SIZE || c.output_size > FNPU_MAX_BO_SIZE ||
	    c.arena_size > FNPU_MAX_BO_SIZE)
		return -EINVAL;
	if ((!(c.flags & FNPU_EXEC_FLAG_INPUT_BO) && c.input_bo) ||
	    (!(c.flags & FNPU_EXEC_FLAG_OUTPUT_BO) && c.output_bo) ||
	    (!(c.flags & FNPU_EXEC_FLAG_ARENA_BO) && c.arena_bo))
		return -EINVAL;
	payload = c.flags & FNPU_EXEC_FLAG_INPUT_BO ? 0 : ALIGN((u64)c.input_size, FNPU_RECORD_ALIGN);
	if (size != sizeof(c) + payload)
		return -EINVAL;
	if (c.flags & FNPU_EXEC_FLAG_NOP)
		return flaxnpu_cmd_execute_nop(ctx, &c);
	model = xa_load(&ctx->models, c.model);
	if (!model)
		return -ENOENT;
	if (!(c.flags & FNPU_EXEC_FLAG_OP_RANGE)) {
		c.first_op = 0;
		c.op_count = model->op_count;
	} else if (!c.op_count || c.first_op >= model->op_count ||
		   c.op_count > model->op_count - c.first_op) {
		return -EINVAL;
	}
	ret = flaxnpu_cmd_new_job(ctx, &job, &resp);
	if (ret)
		return ret;
	kref_get(&model->ref);
	job->model = model;
	kref_get(&model->image->ref);
	job->bo[FNPU_SEG_PROGRAM] = model->image;
	job->seg_size[FNPU_SEG_PROGRAM] = model->image_size;
	ret = flaxnpu_cmd_seg(ctx, job, FNPU_SEG_INPUT, c.input_size,
			      c.flags & FNPU_EXEC_FLAG_INPUT_BO, c.input_bo);
	if (!ret)
		ret = flaxnpu_cmd_seg(ctx, job, FNPU_SEG_OUTPUT, c.output_size,
				      c.flags & FNPU_EXEC_FLAG_OUTPUT_BO, c.output_bo);
	if (!ret)
		ret = flaxnpu_cmd_seg(ctx, job, FNPU_SEG_ARENA, c.arena_size,
				      c.flags & FNPU_EXEC_FLAG_ARENA_BO, c.arena_bo);
	if (!ret && !(c.flags & FNPU_EXEC_FLAG_INPUT_BO))
		ret = flaxnpu_bo_copy_from_user(job->bo[FNPU_SEG_INPUT], ubuf + sizeof(c),
						c.input_size);
	if (ret)
		goto err;
	job->batch = c.batch;
	job->flags = c.flags;
	job->first_op = c.first_op;
	job->op_count = c.op_count;
	job->output_size = c.output_size;
	return flaxnpu_cmd_queue_job(ctx, job, resp, c.hdr.tag);
err:
	flaxnpu_job_put(job);
	kfree(resp);
	return ret;
}

static int flaxnpu_cmd_retrieve(struct flaxnpu_ctx *ctx, const char __user *ubuf, u32 size)
{
	struct fnpu_cmd_retrieve c;
	struct flaxnpu_job *job;
	int ret = 0;

	if (size != sizeof(c))
		return -EINVAL;
	if (copy_from_user(&c, ubuf, sizeof(c)))
		return -EFAULT;
	if (c.flags || c.reserved)
		return -EINVAL;
	job = xa_load(&ctx->jobs, c.job);
	if (!job)
		return -ENOENT;
	spin_lock(&ctx->resp_lock);
	if (job->retrieving) {
		ret = -EALREADY;
	} else {
		job->retrieving = true;
		job->resp.tag = c.hdr.tag;
		job->resp.handle = job->handle;
		if (job->done)
			list_add_tail(&job->resp.node, &ctx->resps);
	}
	spin_unlock(&ctx->resp_lock);
	wake_up_interruptible_all(&ctx->wq);
	return ret;
}

/* One record at ubuf; returns its size or an error. Called with ctx->lock held. */
static ssize_t flaxnpu_cmd_one(struct flaxnpu_ctx *ctx, const char __user *ubuf, size_t avail)
{
	struct fnpu_cmd_hdr hdr;
	int ret;

	if (avail < sizeof(hdr))
		return -EINVAL;
	if (copy_from_user(&hdr, ubuf, sizeof(hdr)))
		return -EFAULT;
	if (hdr.size < sizeof(hdr) || hdr.size % FNPU_RECORD_ALIGN ||
	    hdr.size > FNPU_MAX_RECORD || hdr.size > avail)
		return -EINVAL;
	switch (hdr.type) {
	case FNPU_CMD_LOAD_MODEL:
		ret = flaxnpu_cmd_load_model(ctx, ubuf, hdr.size);
		break;
	case FNPU_CMD_EXECUTE:
		ret = flaxnpu_cmd_execute(ctx, ubuf, hdr.size);
		break;
	case FNPU_CMD_RETRIEVE:
		ret = flaxnpu_cmd_retrieve(ctx, ubuf, hdr.size);
		break;
	default:
		ret = -EINVAL;
	}
	if (ret)
		return ret;
	return hdr.size;
}

ssize_t flaxnpu_cmd_write(struct flaxnpu_ctx *ctx, const char __user *buf, size_t count)
{
	size_t done = 0;
	ssize_t ret = 0;

	mutex_lock(&ctx->lock);
	while (done < count) {
		ret = flaxnpu_cmd_one(ctx, buf + done, count - done);
		if (ret < 0)
			break;
		done += ret;
	}
	mutex_unlock(&ctx->lock);
	return done ? (ssize_t)done : ret;
}

static size_t flaxnpu_resp_size(struct flaxnpu_resp *resp, u32 *out_len)
{
	struct flaxnpu_job *job = resp->job;

	*out_len = 0;
	if (resp->type != FNPU_RESP_RESULT)
		return sizeof(struct fnpu_resp_model);
	if (job->status == FNPU_STATUS_OK && !(job->flags & FNPU_EXEC_FLAG_OUTPUT_BO))
		*out_len = job->output_size;
	return sizeof(struct fnpu_resp_result) + ALIGN((size_t)*out_len, FNPU_RECORD_ALIGN);
}

static int flaxnpu_resp_emit(struct flaxnpu_resp *resp, char __user *ubuf, size_t size, u32 out_len)
{
	struct flaxnpu_job *job = resp->job;
	struct fnpu_resp_result r = {};
	struct fnpu_resp_model m = {};

	BUILD_BUG_ON(sizeof(struct fnpu_resp_model) != sizeof(struct fnpu_resp_job));
	if (resp->type != FNPU_RESP_RESULT) {
		/* RESP_MODEL and RESP_JOB share one layout: header, handle, reserved. */
		m.hdr.type = resp->type;
		m.hdr.size = sizeof(m);
		m.hdr.tag = resp->tag;
		m.model = resp->handle;
		return copy_to_user(ubuf, &m, sizeof(m)) ? -EFAULT : 0;
	}
	r.hdr.type = FNPU_RESP_RESULT;
	r.hdr.size = size;
	r.hdr.tag = resp->tag;
	r.job = job->handle;
	r.status = job->status;
	r.op_index = job->op_index;
	r.info = job->info;
	r.cycles = job->cycles;
	r.device_ns = job->device_ns;
	r.output_size = out_len;
	if (copy_to_user(ubuf, &r, sizeof(r)))
		return -EFAULT;
	ubuf += sizeof(r);
	if (flaxnpu_bo_copy_to_user(job->bo[FNPU_SEG_OUTPUT], ubuf, out_len))
		return -EFAULT;
	if (clear_user(ubuf + out_len, size - sizeof(r) - out_len))
		return -EFAULT;
	return 0;
}

/* A response was read: a job's result ends the job's life as a handle. */
static void flaxnpu_resp_consumed(struct flaxnpu_ctx *ctx, struct flaxnpu_resp *resp)
{
	struct flaxnpu_job *job = resp->job;

	if (!job) {
		kfree(resp);
		return;
	}
	mutex_lock(&ctx->lock);
	if (xa_erase(&ctx->jobs, job->handle) == job) {
		ctx->jobs_open--;
		flaxnpu_job_put(job);
	}
	mutex_unlock(&ctx->lock);
}

static bool flaxnpu_cmd_ready(struct flaxnpu_ctx *ctx)
{
	bool ready;

	spin_lock(&ctx->resp_lock);
	ready = !list_empty(&ctx->resps);
	spin_unlock(&ctx->resp_lock);
	return ready || !READ_ONCE(ctx->fdev->alive);
}

ssize_t flaxnpu_cmd_read(struct flaxnpu_ctx *ctx, char __user *buf, size_t count, bool nonblock)
{
	struct flaxnpu_resp *resp;
	size_t done = 0, size;
	u32 out_len;
	int ret = 0;

	if (mutex_lock_interruptible(&ctx->read_lock))
		return -ERESTARTSYS;
	for (;;) {
		if (!READ_ONCE(ctx->fdev->alive)) {
			ret = -ENODEV;
			break;
		}
		spin_lock(&ctx->resp_lock);
		resp = list_first_entry_or_null(&ctx->resps, struct flaxnpu_resp, node);
		spin_unlock(&ctx->resp_lock);
		if (!resp) {
			if (done)
				break;
			if (nonblock) {
				ret = -EAGAIN;
				break;
			}
			ret = wait_event_interruptible(ctx->wq, flaxnpu_cmd_ready(ctx));
			if (ret)
				break;
			continue;
		}
		size = flaxnpu_resp_size(resp, &out_len);
		if (size > count - done) {
			if (!done)
				ret = -EINVAL;
			break;
		}
		ret = flaxnpu_resp_emit(resp, buf + done, size, out_len);
		if (ret)
			break;
		spin_lock(&ctx->resp_lock);
		list_del_init(&resp->node);
		spin_unlock(&ctx->resp_lock);
		flaxnpu_resp_consumed(ctx, resp);
		done += size;
	}
	mutex_unlock(&ctx->read_lock);
	return done ? (ssize_t)done : ret;
}

__poll_t flaxnpu_cmd_poll(struct flaxnpu_ctx *ctx, struct file *file, poll_table *wait)
{
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &ctx->wq, wait);
	if (!READ_ONCE(ctx->fdev->alive))
		return EPOLLERR | EPOLLHUP;
	spin_lock(&ctx->resp_lock);
	if (!list_empty(&ctx->resps))
		mask |= EPOLLIN | EPOLLRDNORM;
	spin_unlock(&ctx->resp_lock);
	return mask;
}

int flaxnpu_cmd_model_unload(struct flaxnpu_ctx *ctx, struct fnpu_model_unload *arg)
{
	struct flaxnpu_model *model;
	int ret = 0;

	if (arg->reserved)
		return -EINVAL;
	mutex_lock(&ctx->lock);
	model = xa_load(&ctx->models, arg->handle);
	if (!model)
		ret = -ENOENT;
	else if (atomic_read(&model->active))
		ret = -EBUSY;
	else
		xa_erase(&ctx->models, arg->handle);
	mutex_unlock(&ctx->lock);
	if (!ret)
		flaxnpu_model_put(model);
	return ret;
}

static bool flaxnpu_job_done(struct flaxnpu_job *job, u32 *status)
{
	bool done;

	spin_lock(&job->ctx->resp_lock);
	done = job->done;
	*status = job->status;
	spin_unlock(&job->ctx->resp_lock);
	return done;
}

/* Sleeps without the device's alive lock: remove wakes us instead. */
int flaxnpu_cmd_wait(struct flaxnpu_ctx *ctx, struct fnpu_wait *arg)
{
	struct flaxnpu_job *job;
	long timeout;
	u32 status;
	int ret;

	if (arg->flags || arg->reserved)
		return -EINVAL;
	mutex_lock(&ctx->lock);
	job = xa_load(&ctx->jobs, arg->job);
	if (job)
		kref_get(&job->ref);
	mutex_unlock(&ctx->lock);
	if (!job)
		return -ENOENT;
	timeout = min_t(u64, nsecs_to_jiffies64(arg->timeout_ns), MAX_SCHEDULE_TIMEOUT - 1);
	if (arg->timeout_ns && !timeout)
		timeout = 1;
	ret = wait_event_interruptible_timeout(ctx->wq, flaxnpu_job_done(job, &status) ||
					       !READ_ONCE(ctx->fdev->alive), timeout);
	if (flaxnpu_job_done(job, &status)) {
		arg->status = status;
		ret = 0;
	} else if (!READ_ONCE(ctx->fdev->alive)) {
		ret = -ENODEV;
	} else if (ret >= 0) {
		ret = -ETIME;
	}
	flaxnpu_job_put(job);
	return ret;
}

/* The file is released: drop every handle; jobs in flight keep what they use. */
void flaxnpu_cmd_ctx_close(struct flaxnpu_ctx *ctx)
{
	struct flaxnpu_model *model;
	struct flaxnpu_resp *resp, *tmp;
	struct flaxnpu_job *job;
	struct flaxnpu_bo *bo;
	LIST_HEAD(resps);
	unsigned long i;

	spin_lock(&ctx->resp_lock);
	ctx->closed = true;
	list_splice_init(&ctx->resps, &resps);
	spin_unlock(&ctx->resp_lock);
	list_for_each_entry_safe(resp, tmp, &resps, node) {
		list_del_init(&resp->node);
		if (!resp->job)
			kfree(resp);
	}
	mutex_lock(&ctx->lock);
	xa_for_each(&ctx->jobs, i, job) {
		xa_erase(&ctx->jobs, i);
		flaxnpu_job_put(job);
	}
	xa_for_each(&ctx->models, i, model) {
		xa_erase(&ctx->models, i);
		flaxnpu_model_put(model);
	}
	xa_for_each(&ctx->bos, i, bo) {
		xa_erase(&ctx->bos, i);
		flaxnpu_bo_put(bo);
	}
	ctx->jobs_open = 0;
	mutex_unlock(&ctx->lock);
}
