// SPDX-License-Identifier: GPL-2.0
/*
 * flaxnpu: models, jobs, the submission and completion rings.
 *
 * The driver owns the free-running indices; the device's copies (CQ_TAIL,
 * SQ_HEAD) and every completion record are checked before use: a record
 * must carry the expected ring index and name a job that is in flight with
 * the cookie it was submitted with. Anything else is a device fault and
 * leads to a reset, never to a wild pointer.
 */
#include <linux/dma-mapping.h>
#include <linux/slab.h>

#include "flaxnpu_bo.h"
#include "flaxnpu_hw.h"
#include "flaxnpu_job.h"
#include "flaxnpu_pm.h"

static const u16 flaxnpu_seg_rights[FNPU_SEG_COUNT] = {
	/* The program is READ only: user space cannot change it behind the driver. */
	[FNPU_SEG_PROGRAM] = FNPU_SEG_FLAG_READ,
	[FNPU_SEG_ARENA] = FNPU_SEG_FLAG_READ | FNPU_SEG_FLAG_WRITE,
	[FNPU_SEG_INPUT] = FNPU_SEG_FLAG_READ,
	[FNPU_SEG_OUTPUT] = FNPU_SEG_FLAG_WRITE,
};

int flaxnpu_job_rings_init(struct flaxnpu_device *fdev)
{
	struct device *dev = flaxnpu_pdev(fdev);
	u32 n = fdev->ring_entries;

	fdev->sq = dmam_alloc_coherent(dev, n * sizeof(*fdev->sq), &fdev->sq_dma, GFP_KERNEL);
	fdev->cq = dmam_alloc_coherent(dev, n * sizeof(*fdev->cq), &fdev->cq_dma, GFP_KERNEL);
	fdev->slots = devm_kcalloc(dev, n, sizeof(*fdev->slots), GFP_KERNEL);
	if (!fdev->sq || !fdev->cq || !fdev->slots)
		return -ENOMEM;
	INIT_LIST_HEAD(&fdev->inflight);
	return 0;
}

/* Only with no job in flight and the device OFF: the next BOOT starts from index 0. */
void flaxnpu_job_rings_reset(struct flaxnpu_device *fdev)
{
	u32 n = fdev->ring_entries;

	WARN_ON(fdev->inflight_count);
	memset(fdev->sq, 0, n * sizeof(*fdev->sq));
	/* All ones: a stale record never carries the seq (0) expected first. */
	memset(fdev->cq, 0xff, n * sizeof(*fdev->cq));
	fdev->sq_tail = 0;
	fdev->cq_head = 0;
}

static void flaxnpu_model_release(struct kref *ref)
{
	struct flaxnpu_model *model = container_of(ref, struct flaxnpu_model, ref);

	flaxnpu_bo_put(model->image);
	kfree(model);
}

void flaxnpu_model_put(struct flaxnpu_model *model)
{
	if (model)
		kref_put(&model->ref, flaxnpu_model_release);
}

struct flaxnpu_job *flaxnpu_job_alloc(struct flaxnpu_ctx *ctx)
{
	struct flaxnpu_job *job = kzalloc(sizeof(*job), GFP_KERNEL);

	if (!job)
		return NULL;
	job->segs = dma_alloc_coherent(flaxnpu_pdev(ctx->fdev),
				       FNPU_SEG_COUNT * sizeof(*job->segs),
				       &job->segs_dma, GFP_KERNEL);
	if (!job->segs) {
		kfree(job);
		return NULL;
	}
	kref_init(&job->ref);
	kref_get(&ctx->ref);
	job->ctx = ctx;
	INIT_LIST_HEAD(&job->node);
	job->op_index = FNPU_OP_NONE;
	job->resp.type = FNPU_RESP_RESULT;
	job->resp.job = job;
	return job;
}

static void flaxnpu_job_release(struct kref *ref)
{
	struct flaxnpu_job *job = container_of(ref, struct flaxnpu_job, ref);
	struct flaxnpu_ctx *ctx = job->ctx;
	int i;

	dma_free_coherent(flaxnpu_pdev(ctx->fdev), FNPU_SEG_COUNT * sizeof(*job->segs),
			  job->segs, job->segs_dma);
	for (i = 0; i < FNPU_SEG_COUNT; i++)
		flaxnpu_bo_put(job->bo[i]);
	flaxnpu_model_put(job->model);
	kfree(job);
	flaxnpu_ctx_put(ctx);
}

void flaxnpu_job_put(struct flaxnpu_job *job)
{
	if (job)
		kref_put(&job->ref, flaxnpu_job_release);
}

/* Drop the ring's references outside fdev->lock: a release may free the context. */
void flaxnpu_job_put_list(struct list_head *list)
{
	struct flaxnpu_job *job, *tmp;

	list_for_each_entry_safe(job, tmp, list, node) {
		list_del_init(&job->node);
		flaxnpu_job_put(job);
	}
}

static void flaxnpu_job_build_segs(struct flaxnpu_job *job)
{
	int i;

	if (!job->model)	/* a NOP job names no segments */
		return;
	for (i = 0; i < FNPU_SEG_COUNT; i++) {
		job->segs[i].addr = job->bo[i]->pagelist_dma;
		job->segs[i].size = job->seg_size[i];
		job->segs[i].flags = flaxnpu_seg_rights[i] | FNPU_SEG_FLAG_PAGES;
		job->segs[i].reserved = 0;
	}
}

/*
 * Queue a fully built job. Called with ctx->lock held, which also keeps the
 * BO and model "active" counts consistent with BO_FREE and MODEL_UNLOAD.
 */
int flaxnpu_job_submit(struct flaxnpu_device *fdev, struct flaxnpu_job *job)
{
	struct fnpu_sq_entry entry = {};
	u32 slot;
	int i, ret = 0;

	flaxnpu_job_build_segs(job);
	mutex_lock(&fdev->lock);
	if (!fdev->ready) {
		ret = flaxnpu_pm_revive(fdev);
		if (ret)
			goto out;
	}
	slot = fdev->sq_tail & (fdev->ring_entries - 1);
	if (fdev->inflight_count >= fdev->ring_entries || fdev->slots[slot]) {
		ret = -EBUSY;
		goto out;
	}
	job->seq = fdev->sq_tail;
	job->id = ++fdev->next_job_id;
	entry.seq = job->seq;
	entry.job_id = job->id;
	if (job->model) {
		entry.opcode = FNPU_JOB_OP_RUN;
		entry.seg_table = job->segs_dma;
		entry.seg_count = FNPU_SEG_COUNT;
		entry.prog_seg = FNPU_SEG_PROGRAM;
		entry.prog_offset = job->first_op * FNPU_OP_SIZE;
		entry.op_count = job->op_count;
		entry.batch = job->batch;
		for (i = 0; i < FNPU_SEG_COUNT; i++) {
			flaxnpu_bo_sync(job->bo[i], true);
			atomic_inc(&job->bo[i]->active);
		}
		atomic_inc(&job->model->active);
	} else {
		entry.opcode = FNPU_JOB_OP_NOP;
	}
	fdev->sq[slot] = entry;
	kref_get(&job->ref);
	fdev->slots[slot] = job;
	list_add_tail(&job->node, &fdev->inflight);
	if (!fdev->inflight_count++) {
		/* The hang timer runs only while jobs are in flight, from now. */
		fdev->progress = ktime_get();
		flaxnpu_pm_timeouts_refresh(fdev);
		mod_delayed_work(system_wq, &fdev->tdr, msecs_to_jiffies(fdev->tmo.job_ms));
	}
	fdev->sq_tail++;
	job->submitted = ktime_get();
	REG_WR(fdev, SQ_TAIL, fdev->sq_tail);
	flaxnpu_hw_doorbell(fdev, FNPU_DOORBELL_SUBMIT);
out:
	mutex_unlock(&fdev->lock);
	return ret;
}

/* The job leaves the device: record its result and hand it to its context. */
static void flaxnpu_job_finish(struct flaxnpu_device *fdev, struct flaxnpu_job *job,
			       const struct fnpu_cq_entry *rec, ktime_t when,
			       struct list_head *done)
{
	struct flaxnpu_ctx *ctx = job->ctx;
	int i;

	fdev->slots[job->seq & (fdev->ring_entries - 1)] = NULL;
	list_del(&job->node);
	fdev->inflight_count--;
	if (job->model) {
		for (i = 0; i < FNPU_SEG_COUNT; i++) {
			flaxnpu_bo_sync(job->bo[i], false);
			atomic_dec(&job->bo[i]->active);
		}
		atomic_dec(&job->model->active);
	}
	if (rec->status == FNPU_STATUS_OK)
		fdev->jobs_done++;
	else
		fdev->jobs_failed++;
	if (ktime_before(when, job->submitted))
		when = ktime_get();

	spin_lock(&ctx->resp_lock);
	job->status = rec->status;
	/* The device counts from the job's first op; user space names ops of the model. */
	job->op_index = rec->op_index < job->op_count ? job->first_op + rec->op_index : rec->op_index;
	job->info = rec->info;
	job->cycles = rec->cycles;
	job->device_ns = ktime_to_ns(ktime_sub(when, job->submitted));
	job->done = true;
	if (job->retrieving && !ctx->closed)
		list_add_tail(&job->resp.node, &ctx->resps);
	spin_unlock(&ctx->resp_lock);
	wake_up_interruptible_all(&ctx->wq);
	list_add_tail(&job->node, done);
}

void flaxnpu_job_abort_all(struct flaxnpu_device *fdev, struct flaxnpu_job *hung,
			   struct list_head *done)
{
	struct fnpu_cq_entry rec = { .op_index = FNPU_OP_NONE };
	struct flaxnpu_job *job, *tmp;
	ktime_t now = ktime_get();

	lockdep_assert_held(&fdev->lock);
	list_for_each_entry_safe(job, tmp, &fdev->inflight, node) {
		rec.status = job == hung ? FNPU_STATUS_TIMEOUT : FNPU_STATUS_ABORTED;
		flaxnpu_job_finish(fdev, job, &rec, now, done);
	}
}

static int flaxnpu_job_bad_record(struct flaxnpu_device *fdev, const char *what, u32 a, u32 b)
{
	dev_err_ratelimited(flaxnpu_pdev(fdev), "device wrote a bad completion: %s (%u, expected %u); resetting it\n",
			    what, a, b);
	flaxnpu_pm_schedule_recovery(fdev);
	return -EIO;
}

static int flaxnpu_job_reap(struct flaxnpu_device *fdev, struct list_head *done)
{
	u32 n = fdev->ring_entries, tail, window;
	struct fnpu_cq_entry rec;
	struct flaxnpu_job *job;
	ktime_t when = READ_ONCE(fdev->irq_time);
	bool reaped = false;

	lockdep_assert_held(&fdev->lock);
	tail = REG_RD(fdev, CQ_TAIL);
	if (tail - fdev->cq_head > n)
		return flaxnpu_job_bad_record(fdev, "CQ_TAIL beyond the ring", tail, fdev->cq_head);
	/* Read the records only after the tail that announced them. */
	dma_rmb();
	while (fdev->cq_head != tail) {
		/* One copy, then checks on the copy: the device may still write. */
		memcpy(&rec, &fdev->cq[fdev->cq_head & (n - 1)], sizeof(rec));
		if (rec.seq != fdev->cq_head)
			return flaxnpu_job_bad_record(fdev, "record seq", rec.seq, fdev->cq_head);
		window = fdev->sq_tail - rec.sq_seq - 1;
		job = window < n ? fdev->slots[rec.sq_seq & (n - 1)] : NULL;
		if (!job || job->seq != rec.sq_seq || job->id != rec.job_id)
			return flaxnpu_job_bad_record(fdev, "job not in flight", rec.sq_seq,
						      fdev->sq_tail);
		fdev->cq_head++;
		flaxnpu_job_finish(fdev, job, &rec, when, done);
		reaped = true;
	}
	if (!reaped)
		return 0;
	REG_WR(fdev, CQ_HEAD, fdev->cq_head);
	fdev->progress = ktime_get();
	if (!fdev->inflight_count)
		cancel_delayed_work(&fdev->tdr);
	/* The firmware idles when the completion ring is full: tell it there is room. */
	if (REG_RD(fdev, SQ_HEAD) != fdev->sq_tail)
		flaxnpu_hw_doorbell(fdev, FNPU_DOORBELL_SUBMIT);
	return 0;
}

void flaxnpu_job_process_completions(struct flaxnpu_device *fdev)
{
	LIST_HEAD(done);

	mutex_lock(&fdev->lock);
	if (fdev->ready)
		flaxnpu_job_reap(fdev, &done);
	mutex_unlock(&fdev->lock);
	flaxnpu_job_put_list(&done);
}

/*
 * Hang detection: the oldest job in flight times out when the device has
 * made no progress (no completion) for job_ms. Measuring progress rather
 * than each job's age keeps a long queue from timing out jobs that merely
 * waited behind others.
 */
void flaxnpu_job_tdr_work(struct work_struct *work)
{
	struct flaxnpu_device *fdev = container_of(to_delayed_work(work),
						   struct flaxnpu_device, tdr);
	struct flaxnpu_job *oldest;
	LIST_HEAD(done);
	s64 idle_ms;

	mutex_lock(&fdev->lock);
	if (fdev->removing || list_empty(&fdev->inflight))
		goto out;
	/* A lost interrupt is not a hang: look at the ring first. */
	if (fdev->ready)
		flaxnpu_job_reap(fdev, &done);
	if (list_empty(&fdev->inflight))
		goto out;
	idle_ms = ktime_ms_delta(ktime_get(), fdev->progress);
	if (idle_ms < fdev->tmo.job_ms) {
		schedule_delayed_work(&fdev->tdr, msecs_to_jiffies(fdev->tmo.job_ms - idle_ms) + 1);
		goto out;
	}
	oldest = list_first_entry(&fdev->inflight, struct flaxnpu_job, node);
	dev_err(flaxnpu_pdev(fdev),
		"job %llu (ring seq %u) made no progress for %lld ms (state %s, heartbeat %u): resetting the device\n",
		oldest->id, oldest->seq, idle_ms, flaxnpu_hw_state_name(REG_RD(fdev, STATE)),
		REG_RD(fdev, HEARTBEAT));
	flaxnpu_pm_recover_locked(fdev, oldest, &done);
out:
	mutex_unlock(&fdev->lock);
	flaxnpu_job_put_list(&done);
}
