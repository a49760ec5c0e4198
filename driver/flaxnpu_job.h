/* SPDX-License-Identifier: GPL-2.0 */
/* flaxnpu: models, jobs, the submission and completion rings. */
#ifndef FLAXNPU_JOB_H
#define FLAXNPU_JOB_H

#include <linux/kref.h>
#include <linux/ktime.h>

#include "flaxnpu_drv.h"

struct flaxnpu_bo;

/* A loaded program image: kernel-owned, mapped READ-only into every job. */
struct flaxnpu_model {
	struct kref ref;
	struct flaxnpu_bo *image;
	u32 image_size;
	u32 op_count;
	atomic_t active;		/* jobs in flight */
};

struct flaxnpu_job {
	struct kref ref;		/* handle table, the ring while in flight, waiters */
	struct flaxnpu_ctx *ctx;
	struct flaxnpu_model *model;
	struct flaxnpu_bo *bo[FNPU_SEG_COUNT];	/* indexed by SEG_* */
	u32 seg_size[FNPU_SEG_COUNT];
	struct fnpu_seg_entry *segs;	/* the segment table the device reads */
	dma_addr_t segs_dma;
	u32 handle;
	u32 batch;
	u32 flags;			/* EXEC_FLAG_* */
	u32 first_op;			/* the model's ops [first_op, first_op + op_count) */
	u32 op_count;
	u32 output_size;
	u64 id;				/* ring cookie, unique per device */
	u32 seq;			/* ring index while in flight */
	struct list_head node;		/* fdev->inflight, then a local done list */
	ktime_t submitted;

	/* Written once under ctx->resp_lock when the job leaves the device. */
	bool done;
	u32 status;
	u32 op_index;			/* in the model's op stream, not the job's */
	u32 info;
	u64 cycles;
	u64 device_ns;
	bool retrieving;		/* a RETRIEVE is waiting for it */
	struct flaxnpu_resp resp;
};

int flaxnpu_job_rings_init(struct flaxnpu_device *fdev);
void flaxnpu_job_rings_fini(struct flaxnpu_device *fdev);
void flaxnpu_job_rings_reset(struct flaxnpu_device *fdev);

void flaxnpu_model_put(struct flaxnpu_model *model);
struct flaxnpu_job *flaxnpu_job_alloc(struct flaxnpu_ctx *ctx);
void flaxnpu_job_put(struct flaxnpu_job *job);
void flaxnpu_job_put_list(struct list_head *list);
int flaxnpu_job_submit(struct flaxnpu_device *fdev, struct flaxnpu_job *job);

void flaxnpu_job_process_completions(struct flaxnpu_device *fdev);
void flaxnpu_job_abort_all(struct flaxnpu_device *fdev, struct flaxnpu_job *hung,
			   struct list_head *done);
void flaxnpu_job_tdr_work(struct work_struct *work);

#endif
