// SPDX-License-Identifier: GPL-2.0
/*
 * flaxnpu: buffer objects.
 *
 * A BO is a set of order-0 pages, each streaming-mapped for the device, plus
 * a coherent page list that a SEG_FLAG_PAGES segment points at. Page lists
 * instead of one contiguous range let large BOs be allocated on a fragmented
 * machine. User space maps the same pages; mappings hold page references, so
 * they stay valid after the BO is freed (BO_FREE documents this).
 */
#include <linux/dma-mapping.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/version.h>

#include "flaxnpu_bo.h"

static void flaxnpu_bo_release(struct kref *ref)
{
	struct flaxnpu_bo *bo = container_of(ref, struct flaxnpu_bo, ref);
	struct device *dev = flaxnpu_pdev(bo->fdev);
	unsigned int i;

	for (i = 0; i < bo->npages; i++) {
		if (!bo->pages[i])
			break;
		if (bo->dma[i])
			dma_unmap_page(dev, bo->dma[i], PAGE_SIZE, DMA_BIDIRECTIONAL);
		__free_page(bo->pages[i]);
	}
	if (bo->pagelist)
		dma_free_coherent(dev, bo->npages * sizeof(u64), bo->pagelist, bo->pagelist_dma);
	kvfree(bo->dma);
	kvfree(bo->pages);
	put_device(&bo->fdev->dev);
	kfree(bo);
}

void flaxnpu_bo_put(struct flaxnpu_bo *bo)
{
	if (bo)
		kref_put(&bo->ref, flaxnpu_bo_release);
}

/* Size must be 1..MAX_BO_SIZE (checked by callers); it is rounded up to pages. */
struct flaxnpu_bo *flaxnpu_bo_alloc(struct flaxnpu_device *fdev, u64 size)
{
	struct device *dev = flaxnpu_pdev(fdev);
	struct flaxnpu_bo *bo;
	unsigned int i;

	bo = kzalloc(sizeof(*bo), GFP_KERNEL);
	if (!bo)
		return ERR_PTR(-ENOMEM);
	kref_init(&bo->ref);
	get_device(&fdev->dev);
	bo->fdev = fdev;
	bo->size = PAGE_ALIGN(size);
	bo->npages = bo->size >> PAGE_SHIFT;
	bo->pages = kvcalloc(bo->npages, sizeof(*bo->pages), GFP_KERNEL);
	bo->dma = kvcalloc(bo->npages, sizeof(*bo->dma), GFP_KERNEL);
	if (!bo->pages || !bo->dma)
		goto err;
	bo->pagelist = dma_alloc_coherent(dev, bo->npages * sizeof(u64), &bo->pagelist_dma,
					  GFP_KERNEL);
	if (!bo->pagelist)
		goto err;
	for (i = 0; i < bo->npages; i++) {
		/* Charged to the caller's memcg: BOs are user-controlled allocations. */
		bo->pages[i] = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NOWARN);
		if (!bo->pages[i] || fatal_signal_pending(current))
			goto err;
		bo->dma[i] = dma_map_page(dev, bo->pages[i], 0, PAGE_SIZE, DMA_BIDIRECTIONAL);
		if (dma_mapping_error(dev, bo->dma[i])) {
			bo->dma[i] = 0;
			goto err;
		}
		bo->pagelist[i] = cpu_to_le64(bo->dma[i]);
	}
	return bo;
err:
	flaxnpu_bo_put(bo);
	return ERR_PTR(-ENOMEM);
}

int flaxnpu_bo_copy_from_user(struct flaxnpu_bo *bo, const char __user *src, size_t len)
{
	size_t off, n;

	for (off = 0; off < len; off += n) {
		n = min_t(size_t, PAGE_SIZE, len - off);
		if (copy_from_user(page_address(bo->pages[off >> PAGE_SHIFT]), src + off, n))
			return -EFAULT;
	}
	return 0;
}

int flaxnpu_bo_copy_to_user(struct flaxnpu_bo *bo, char __user *dst, size_t len)
{
	size_t off, n;

	for (off = 0; off < len; off += n) {
		n = min_t(size_t, PAGE_SIZE, len - off);
		if (copy_to_user(dst + off, page_address(bo->pages[off >> PAGE_SHIFT]), n))
			return -EFAULT;
	}
	return 0;
}

/* Ownership transfer around a job; free with dma-direct, kept for IOMMUs and bounce buffers. */
void flaxnpu_bo_sync(struct flaxnpu_bo *bo, bool for_device)
{
	struct device *dev = flaxnpu_pdev(bo->fdev);
	unsigned int i;

	for (i = 0; i < bo->npages; i++) {
		if (for_device)
			dma_sync_single_for_device(dev, bo->dma[i], PAGE_SIZE, DMA_BIDIRECTIONAL);
		else
			dma_sync_single_for_cpu(dev, bo->dma[i], PAGE_SIZE, DMA_BIDIRECTIONAL);
	}
}

int flaxnpu_bo_ioctl_create(struct flaxnpu_ctx *ctx, struct fnpu_bo_create *arg)
{
	struct flaxnpu_bo *bo;
	u32 handle;
	int ret;

	if (arg->flags || arg->reserved)
		return -EINVAL;
	if (!arg->bo_size || arg->bo_size > FNPU_MAX_BO_SIZE)
		return -EINVAL;
	bo = flaxnpu_bo_alloc(ctx->fdev, arg->bo_size);
	if (IS_ERR(bo))
		return PTR_ERR(bo);
	mutex_lock(&ctx->lock);
	/* Cyclic: a freed handle (and its mmap offset) is not handed out again soon. */
	ret = xa_alloc_cyclic(&ctx->bos, &handle, bo, XA_LIMIT(1, FLAXNPU_MAX_HANDLE),
			      &ctx->next_bo, GFP_KERNEL);
	mutex_unlock(&ctx->lock);
	if (ret < 0) {
		flaxnpu_bo_put(bo);
		return ret == -EBUSY ? -ENOSPC : ret;
	}
	arg->handle = handle;
	arg->mmap_offset = (u64)handle << FLAXNPU_BO_OFFSET_SHIFT;
	return 0;
}

int flaxnpu_bo_ioctl_free(struct flaxnpu_ctx *ctx, struct fnpu_bo_free *arg)
{
	struct flaxnpu_bo *bo;
	int ret = 0;

	if (arg->reserved)
		return -EINVAL;
	mutex_lock(&ctx->lock);
	bo = xa_load(&ctx->bos, arg->handle);
	if (!bo)
		ret = -ENOENT;
	else if (atomic_read(&bo->active))
		ret = -EBUSY;
	else
		xa_erase(&ctx->bos, arg->handle);
	mutex_unlock(&ctx->lock);
	if (!ret)
		flaxnpu_bo_put(bo);
	return ret;
}

int flaxnpu_bo_mmap(struct flaxnpu_ctx *ctx, struct vm_area_struct *vma)
{
	const unsigned int win = FLAXNPU_BO_OFFSET_SHIFT - PAGE_SHIFT;
	unsigned long first = vma->vm_pgoff & ((1UL << win) - 1);
	unsigned long handle = vma->vm_pgoff >> win;
	unsigned long i, n = vma_pages(vma);
	struct flaxnpu_bo *bo;
	int ret = 0;

	/* A private mapping would copy-on-write away from what the device sees. */
	if (!(vma->vm_flags & VM_SHARED))
		return -EINVAL;
	if (vma->vm_flags & VM_EXEC)
		return -EPERM;
	mutex_lock(&ctx->lock);
	bo = handle <= FLAXNPU_MAX_HANDLE ? xa_load(&ctx->bos, handle) : NULL;
	if (!bo || first >= bo->npages || n > bo->npages - first) {
		ret = -EINVAL;
		goto out;
	}
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
	vm_flags_mod(vma, VM_DONTEXPAND | VM_DONTDUMP, VM_MAYEXEC);
#else
	vma->vm_flags |= VM_DONTEXPAND | VM_DONTDUMP;
	vma->vm_flags &= ~VM_MAYEXEC;
#endif
	for (i = 0; i < n && !ret; i++)
		ret = vm_insert_page(vma, vma->vm_start + i * PAGE_SIZE, bo->pages[first + i]);
out:
	mutex_unlock(&ctx->lock);
	return ret;
}
