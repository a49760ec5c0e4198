/* SPDX-License-Identifier: GPL-2.0 */
/* flaxnpu: buffer objects: page-list backed DMA memory, mmap, user copies. */
#ifndef FLAXNPU_BO_H
#define FLAXNPU_BO_H

#include <linux/kref.h>
#include <linux/mm_types.h>

#include "flaxnpu_drv.h"

/* mmap offset of a BO = handle << SHIFT: one MAX_BO_SIZE window per handle. */
#define FLAXNPU_BO_OFFSET_SHIFT 28
#define FLAXNPU_MAX_HANDLE 0xffffff

struct flaxnpu_bo {
	struct kref ref;		/* a handle, each job using it */
	struct flaxnpu_device *fdev;
	u64 size;			/* bytes, whole pages */
	unsigned int npages;
	struct page **pages;
	dma_addr_t *dma;
	__le64 *pagelist;		/* the SEG_FLAG_PAGES list the device reads */
	dma_addr_t pagelist_dma;
	atomic_t active;		/* jobs in flight that name it */
};

struct flaxnpu_bo *flaxnpu_bo_alloc(struct flaxnpu_device *fdev, u64 size);
void flaxnpu_bo_put(struct flaxnpu_bo *bo);
int flaxnpu_bo_copy_from_user(struct flaxnpu_bo *bo, const char __user *src, size_t len);
int flaxnpu_bo_copy_to_user(struct flaxnpu_bo *bo, char __user *dst, size_t len);
void flaxnpu_bo_sync(struct flaxnpu_bo *bo, bool for_device);

int flaxnpu_bo_ioctl_create(struct flaxnpu_ctx *ctx, struct fnpu_bo_create *arg);
int flaxnpu_bo_ioctl_free(struct flaxnpu_ctx *ctx, struct fnpu_bo_free *arg);
int flaxnpu_bo_mmap(struct flaxnpu_ctx *ctx, struct vm_area_struct *vma);

#endif
