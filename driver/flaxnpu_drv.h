/* SPDX-License-Identifier: GPL-2.0 */
/*
 * flaxnpu: the device and per-open context objects shared by every subsystem.
 *
 * Lock order: ctx->lock -> fdev->lock -> ctx->resp_lock (a spinlock, leaf).
 * fdev->alive_sem is taken for read around every file operation that
 * touches the hardware; remove takes it for write once, to fence them off.
 */
#ifndef FLAXNPU_DRV_H
#define FLAXNPU_DRV_H

#include <linux/cdev.h>
#include <linux/device.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/rwsem.h>
#include <linux/wait.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "fnpu_hw.h"
#include "fnpu_prog.h"
#include "fnpu_uapi.h"

#define FLAXNPU_NAME "flaxnpu"
#define FLAXNPU_FW_NAME "flaxnpu/flaxnpu-fw.bin"

struct flaxnpu_job;

/* A response waiting for read(): RESP_MODEL / RESP_JOB, or a job's RESP_RESULT. */
struct flaxnpu_resp {
	struct list_head node;
	u32 type;
	u64 tag;
	u32 handle;			/* model or job handle */
	struct flaxnpu_job *job;	/* RESP_RESULT only */
};

/* Every wait of the driver, in milliseconds; filled by flaxnpu_pm_timeouts_init(). */
struct flaxnpu_timeouts {
	unsigned int ctrl_ms;	/* a RESET/NOP/INJECT control command is acknowledged */
	unsigned int boot_ms;	/* BOOT: firmware answers the handshake */
	unsigned int job_ms;	/* the device makes no progress on the oldest job */
	unsigned int poll_ms;	/* re-check of an ack in case its interrupt was lost */
};

struct flaxnpu_device {
	struct device dev;		/* /sys/class/flaxnpu/flaxnpuN; its release frees us */
	struct cdev cdev;
	struct pci_dev *pdev;
	void __iomem *db;		/* BAR0: ivshmem registers (DOORBELL) */
	void __iomem *regs;		/* BAR2: the NPU register window */
	u32 peer;			/* ivshmem peer id of the device model */
	int minor;
	struct flaxnpu_timeouts tmo;

	struct rw_semaphore alive_sem;
	bool alive;			/* false once remove started: fops return -ENODEV */

	/* Control path, rings and jobs in flight. */
	struct mutex lock;
	wait_queue_head_t ctrl_wq;	/* woken by IRQ_EVENT */
	u32 ctrl_seq;
	bool ready;			/* firmware booted, rings configured */
	bool removing;
	void *fw_buf;			/* checked firmware image, kept for reboots */
	dma_addr_t fw_dma;
	u32 fw_size;
	u32 fw_version;

	struct fnpu_sq_entry *sq;
	dma_addr_t sq_dma;
	struct fnpu_cq_entry *cq;
	dma_addr_t cq_dma;
	u32 ring_entries;		/* both rings, a power of two */
	u32 sq_tail;
	u32 cq_head;
	struct flaxnpu_job **slots;	/* job in flight per submission slot */
	struct list_head inflight;	/* jobs in flight, oldest first */
	unsigned int inflight_count;
	u64 next_job_id;
	ktime_t progress;		/* last submit into an idle ring or completion */
	ktime_t irq_time;		/* when the completion interrupt arrived */
	struct delayed_work tdr;	/* hang detection */
	struct work_struct recover_work;
	bool recover_pending;

	u64 jobs_done;
	u64 jobs_failed;
	u64 resets;

	spinlock_t ctx_lock;
	struct list_head contexts;	/* open files, to wake them on remove */
};

/* One open file: its own buffer objects, models and jobs. */
struct flaxnpu_ctx {
	struct kref ref;		/* the file, and each job not yet freed */
	struct flaxnpu_device *fdev;
	struct mutex lock;		/* handles, write() */
	struct mutex read_lock;		/* one reader takes a record off at a time */
	struct xarray bos;
	struct xarray models;
	struct xarray jobs;
	u32 next_bo;
	u32 next_model;
	u32 next_job;
	unsigned int jobs_open;		/* executed, result not yet read */
	spinlock_t resp_lock;
	bool closed;			/* file released: completions queue nothing */
	struct list_head resps;		/* responses ready for read() */
	wait_queue_head_t wq;
	struct list_head node;
};

static inline struct device *flaxnpu_pdev(struct flaxnpu_device *fdev)
{
	return &fdev->pdev->dev;
}

bool flaxnpu_enter(struct flaxnpu_device *fdev);
void flaxnpu_exit(struct flaxnpu_device *fdev);
void flaxnpu_ctx_put(struct flaxnpu_ctx *ctx);

extern const struct attribute_group *flaxnpu_sysfs_groups[];

#endif
