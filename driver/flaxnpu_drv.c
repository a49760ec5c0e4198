// SPDX-License-Identifier: GPL-2.0
/*
 * flaxnpu: module, PCI probe/remove, character device and file operations.
 *
 * The NPU rides on QEMU's ivshmem-doorbell (1af4:1110): BAR0 holds the
 * doorbell, BAR2 the NPU's register window. Other ivshmem users share those
 * IDs, so the driver binds only when BAR2 carries the NPU's signature.
 */
#include <linux/dma-mapping.h>
#include <linux/fs.h>
#include <linux/idr.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/version.h>

#include "flaxnpu_bo.h"
#include "flaxnpu_cmd.h"
#include "flaxnpu_fw.h"
#include "flaxnpu_hw.h"
#include "flaxnpu_job.h"
#include "flaxnpu_pm.h"

#define FLAXNPU_MAX_DEVICES 64

static struct class *flaxnpu_class;
static dev_t flaxnpu_devt;
static DEFINE_IDA(flaxnpu_ida);

/* Enter a section that may touch the device; false once remove began. */
bool flaxnpu_enter(struct flaxnpu_device *fdev)
{
	down_read(&fdev->alive_sem);
	if (fdev->alive)
		return true;
	up_read(&fdev->alive_sem);
	return false;
}

void flaxnpu_exit(struct flaxnpu_device *fdev)
{
	up_read(&fdev->alive_sem);
}

static void flaxnpu_ctx_release(struct kref *ref)
{
	struct flaxnpu_ctx *ctx = container_of(ref, struct flaxnpu_ctx, ref);
	struct flaxnpu_device *fdev = ctx->fdev;

	spin_lock(&fdev->ctx_lock);
	list_del(&ctx->node);
	spin_unlock(&fdev->ctx_lock);
	xa_destroy(&ctx->bos);
	xa_destroy(&ctx->models);
	xa_destroy(&ctx->jobs);
	kfree(ctx);
	put_device(&fdev->dev);
}

void flaxnpu_ctx_put(struct flaxnpu_ctx *ctx)
{
	kref_put(&ctx->ref, flaxnpu_ctx_release);
}

static int flaxnpu_open(struct inode *inode, struct file *file)
{
	struct flaxnpu_device *fdev = container_of(inode->i_cdev, struct flaxnpu_device, cdev);
	struct flaxnpu_ctx *ctx;

	ctx = kzalloc(sizeof(*ctx), GFP_KERNEL);
	if (!ctx)
		return -ENOMEM;
	if (!flaxnpu_enter(fdev)) {
		kfree(ctx);
		return -ENODEV;
	}
	kref_init(&ctx->ref);
	get_device(&fdev->dev);
	ctx->fdev = fdev;
	mutex_init(&ctx->lock);
	mutex_init(&ctx->read_lock);
	xa_init_flags(&ctx->bos, XA_FLAGS_ALLOC1);
	xa_init_flags(&ctx->models, XA_FLAGS_ALLOC1);
	xa_init_flags(&ctx->jobs, XA_FLAGS_ALLOC1);
	spin_lock_init(&ctx->resp_lock);
	INIT_LIST_HEAD(&ctx->resps);
	init_waitqueue_head(&ctx->wq);
	spin_lock(&fdev->ctx_lock);
	list_add_tail(&ctx->node, &fdev->contexts);
	spin_unlock(&fdev->ctx_lock);
	flaxnpu_exit(fdev);
	file->private_data = ctx;
	return stream_open(inode, file);
}

static int flaxnpu_release(struct inode *inode, struct file *file)
{
	struct flaxnpu_ctx *ctx = file->private_data;

	flaxnpu_cmd_ctx_close(ctx);
	flaxnpu_ctx_put(ctx);
	return 0;
}

static ssize_t flaxnpu_write(struct file *file, const char __user *buf, size_t count,
			     loff_t *pos)
{
	struct flaxnpu_ctx *ctx = file->private_data;
	ssize_t ret;

	if (!flaxnpu_enter(ctx->fdev))
		return -ENODEV;
	ret = flaxnpu_cmd_write(ctx, buf, count);
	flaxnpu_exit(ctx->fdev);
	return ret;
}

static ssize_t flaxnpu_read(struct file *file, char __user *buf, size_t count, loff_t *pos)
{
	struct flaxnpu_ctx *ctx = file->private_data;

	return flaxnpu_cmd_read(ctx, buf, count, file->f_flags & O_NONBLOCK);
}

static __poll_t flaxnpu_poll(struct file *file, poll_table *wait)
{
	return flaxnpu_cmd_poll(file->private_data, file, wait);
}

static int flaxnpu_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct flaxnpu_ctx *ctx = file->private_data;
	int ret;

	if (!flaxnpu_enter(ctx->fdev))
		return -ENODEV;
	ret = flaxnpu_bo_mmap(ctx, vma);
	flaxnpu_exit(ctx->fdev);
	return ret;
}

static int flaxnpu_ioctl_info(struct flaxnpu_ctx *ctx, void *data)
{
	struct flaxnpu_device *fdev = ctx->fdev;
	struct fnpu_info *arg = data;
	u32 hi;

	if (arg->flags || arg->reserved0 || arg->reserved1 || arg->reserved2)
		return -EINVAL;
	arg->uapi_version = FNPU_UAPI_ABI_MAJOR << 16 | FNPU_UAPI_ABI_MINOR;
	arg->hw_abi = REG_RD(fdev, ABI_VERSION);
	arg->fw_version = REG_RD(fdev, FW_VERSION);
	arg->state = REG_RD(fdev, STATE);
	arg->caps = REG_RD(fdev, CAPS);
	arg->minor = fdev->minor;
	arg->jobs_done = READ_ONCE(fdev->jobs_done);
	arg->jobs_failed = READ_ONCE(fdev->jobs_failed);
	arg->resets = READ_ONCE(fdev->resets);
	/* LO/HI pair: re-read until HI is stable so the value is not torn. */
	do {
		hi = REG_RD(fdev, CYCLES_HI);
		arg->cycles = (u64)hi << 32 | REG_RD(fdev, CYCLES_LO);
	} while (hi != REG_RD(fdev, CYCLES_HI));
	arg->max_bo_size = FNPU_MAX_BO_SIZE;
	return 0;
}

static int flaxnpu_ioctl_bo_create(struct flaxnpu_ctx *ctx, void *arg)
{
	return flaxnpu_bo_ioctl_create(ctx, arg);
}

static int flaxnpu_ioctl_bo_free(struct flaxnpu_ctx *ctx, void *arg)
{
	return flaxnpu_bo_ioctl_free(ctx, arg);
}

static int flaxnpu_ioctl_model_unload(struct flaxnpu_ctx *ctx, void *arg)
{
	return flaxnpu_cmd_model_unload(ctx, arg);
}

static int flaxnpu_ioctl_wait(struct flaxnpu_ctx *ctx, void *arg)
{
	return flaxnpu_cmd_wait(ctx, arg);
}

struct flaxnpu_ioctl_desc {
	unsigned int cmd;
	u32 size;
	bool sleeps;		/* waits without the alive lock (remove wakes it) */
	int (*fn)(struct flaxnpu_ctx *ctx, void *arg);
};

#define FLAXNPU_IOCTL(name, type, func, slp) \
	[_IOC_NR(FNPU_IOCTL_##name)] = { FNPU_IOCTL_##name, sizeof(struct type), slp, func }

static const struct flaxnpu_ioctl_desc flaxnpu_ioctls[] = {
	FLAXNPU_IOCTL(INFO, fnpu_info, flaxnpu_ioctl_info, false),
	FLAXNPU_IOCTL(BO_CREATE, fnpu_bo_create, flaxnpu_ioctl_bo_create, false),
	FLAXNPU_IOCTL(BO_FREE, fnpu_bo_free, flaxnpu_ioctl_bo_free, false),
	FLAXNPU_IOCTL(MODEL_UNLOAD, fnpu_model_unload, flaxnpu_ioctl_model_unload, false),
	FLAXNPU_IOCTL(WAIT, fnpu_wait, flaxnpu_ioctl_wait, true),
};

/*
 * Structs grow by size: the leading u32 `size` says how much the caller
 * knows. Smaller than v1 is refused; larger is accepted when every byte the
 * driver does not know is zero (-E2BIG otherwise). _IOC_SIZE is not used, so
 * a newer caller's request number keeps working.
 */
static long flaxnpu_ioctl(struct file *file, unsigned int cmd, unsigned long uarg)
{
	struct flaxnpu_ctx *ctx = file->private_data;
	void __user *uptr = (void __user *)uarg;
	const struct flaxnpu_ioctl_desc *desc;
	union {
		struct fnpu_info info;
		struct fnpu_bo_create bo_create;
		struct fnpu_bo_free bo_free;
		struct fnpu_model_unload model_unload;
		struct fnpu_wait wait;
	} arg;
	u32 usize;
	long ret;

	if (_IOC_TYPE(cmd) != FNPU_IOCTL_TYPE || _IOC_NR(cmd) >= ARRAY_SIZE(flaxnpu_ioctls))
		return -ENOTTY;
	desc = &flaxnpu_ioctls[_IOC_NR(cmd)];
	if (_IOC_DIR(cmd) != _IOC_DIR(desc->cmd))
		return -ENOTTY;
	if (get_user(usize, (u32 __user *)uptr))
		return -EFAULT;
	if (usize < desc->size)
		return -EINVAL;
	if (usize > PAGE_SIZE)
		return -E2BIG;
	if (usize > desc->size) {
		ret = check_zeroed_user(uptr + desc->size, usize - desc->size);
		if (ret <= 0)
			return ret ? ret : -E2BIG;
	}
	if (copy_from_user(&arg, uptr, desc->size))
		return -EFAULT;
	if (desc->sleeps) {
		if (!READ_ONCE(ctx->fdev->alive))
			return -ENODEV;
		ret = desc->fn(ctx, &arg);
	} else {
		if (!flaxnpu_enter(ctx->fdev))
			return -ENODEV;
		ret = desc->fn(ctx, &arg);
		flaxnpu_exit(ctx->fdev);
	}
	if (!ret && (_IOC_DIR(desc->cmd) & _IOC_READ) && copy_to_user(uptr, &arg, desc->size))
		ret = -EFAULT;
	return ret;
}

static const struct file_operations flaxnpu_fops = {
	.owner = THIS_MODULE,
	.open = flaxnpu_open,
	.release = flaxnpu_release,
	.read = flaxnpu_read,
	.write = flaxnpu_write,
	.poll = flaxnpu_poll,
	.mmap = flaxnpu_mmap,
	.unlocked_ioctl = flaxnpu_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = no_llseek,
};

static void flaxnpu_dev_release(struct device *dev)
{
	struct flaxnpu_device *fdev = container_of(dev, struct flaxnpu_device, dev);

	ida_free(&flaxnpu_ida, fdev->minor);
	pci_dev_put(fdev->pdev);
	kfree(fdev);
}

/* Identify the device before touching anything: other ivshmem users share the IDs. */
static int flaxnpu_identify(struct pci_dev *pdev, void __iomem *regs, u32 *peer)
{
	u32 magic, abi;

	if (pci_resource_len(pdev, FNPU_BAR_REGS) < FNPU_REG_WINDOW_SIZE)
		return -ENODEV;
	magic = ioread32(regs + FNPU_REG_MAGIC);
	if (magic != FNPU_SIGNATURE) {
		dev_info(&pdev->dev, "BAR2 signature 0x%08x is not flaxnpu's 0x%08x: not an NPU, left alone\n",
			 magic, FNPU_SIGNATURE);
		return -ENODEV;
	}
	abi = ioread32(regs + FNPU_REG_ABI_VERSION);
	if (abi >> 16 != FNPU_HW_ABI_MAJOR) {
		dev_err(&pdev->dev, "device speaks hardware ABI %u.%u, this driver %u.%u\n",
			abi >> 16, abi & 0xffff, FNPU_HW_ABI_MAJOR, FNPU_HW_ABI_MINOR);
		return -ENODEV;
	}
	*peer = ioread32(regs + FNPU_REG_DEVICE_PEER);
	if (*peer > 0xffff) {
		dev_err(&pdev->dev, "device model peer id %u does not fit a doorbell\n", *peer);
		return -ENODEV;
	}
	return 0;
}

static void flaxnpu_init_fdev(struct flaxnpu_device *fdev, struct pci_dev *pdev)
{
	fdev->pdev = pci_dev_get(pdev);
	init_rwsem(&fdev->alive_sem);
	mutex_init(&fdev->lock);
	init_waitqueue_head(&fdev->ctrl_wq);
	spin_lock_init(&fdev->ctx_lock);
	INIT_LIST_HEAD(&fdev->contexts);
	INIT_DELAYED_WORK(&fdev->tdr, flaxnpu_job_tdr_work);
	INIT_WORK(&fdev->recover_work, flaxnpu_pm_recover_work);
	flaxnpu_pm_timeouts_init(fdev);
	fdev->ring_entries = flaxnpu_pm_ring_entries();
	device_initialize(&fdev->dev);
	fdev->dev.class = flaxnpu_class;
	fdev->dev.parent = &pdev->dev;
	fdev->dev.groups = flaxnpu_sysfs_groups;
	fdev->dev.release = flaxnpu_dev_release;
	fdev->dev.devt = MKDEV(MAJOR(flaxnpu_devt), fdev->minor);
}

static int flaxnpu_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct flaxnpu_device *fdev;
	void __iomem *regs;
	int minor, ret;
	u32 peer;

	ret = pcim_enable_device(pdev);
	if (ret) {
		dev_err(&pdev->dev, "failed to enable device: %d\n", ret);
		return ret;
	}
	ret = pcim_iomap_regions(pdev, BIT(FNPU_BAR_DOORBELL) | BIT(FNPU_BAR_REGS), FLAXNPU_NAME);
	if (ret) {
		dev_err(&pdev->dev, "failed to map BARs: %d\n", ret);
		return ret;
	}
	regs = pcim_iomap_table(pdev)[FNPU_BAR_REGS];
	ret = flaxnpu_identify(pdev, regs, &peer);
	if (ret)
		return ret;
	pci_set_master(pdev);
	ret = dma_set_mask_and_coherent(&pdev->dev, DMA_BIT_MASK(64));
	if (ret) {
		dev_err(&pdev->dev, "failed to set DMA mask: %d\n", ret);
		return ret;
	}
	minor = ida_alloc_max(&flaxnpu_ida, FLAXNPU_MAX_DEVICES - 1, GFP_KERNEL);
	if (minor < 0) {
		dev_err(&pdev->dev, "failed to allocate a minor: %d\n", minor);
		return minor;
	}
	fdev = kzalloc(sizeof(*fdev), GFP_KERNEL);
	if (!fdev) {
		ida_free(&flaxnpu_ida, minor);
		return -ENOMEM;
	}
	/* From here on the device's release frees fdev and the minor. */
	fdev->minor = minor;
	fdev->regs = regs;
	fdev->db = pcim_iomap_table(pdev)[FNPU_BAR_DOORBELL];
	fdev->peer = peer;
	fdev->ctrl_seq = ioread32(regs + FNPU_REG_CTRL_SEQ);
	flaxnpu_init_fdev(fdev, pdev);

	ret = flaxnpu_job_rings_init(fdev);
	if (ret) {
		dev_err(&pdev->dev, "failed to allocate rings: %d\n", ret);
		goto err_put;
	}
	ret = flaxnpu_fw_load(fdev);
	if (ret) {
		dev_err(&pdev->dev, "failed to load firmware: %d\n", ret);
		goto err_put;
	}
	ret = flaxnpu_hw_irq_init(fdev);
	if (ret) {
		dev_err(&pdev->dev, "failed to set up interrupts: %d\n", ret);
		goto err_fw;
	}
	mutex_lock(&fdev->lock);
	ret = flaxnpu_pm_reset(fdev);
	if (!ret)
		ret = flaxnpu_fw_boot(fdev);
	mutex_unlock(&fdev->lock);
	if (ret) {
		dev_err(&pdev->dev, "failed to boot firmware: %d\n", ret);
		goto err_irq;
	}
	fdev->alive = true;
	ret = dev_set_name(&fdev->dev, "flaxnpu%d", minor);
	if (ret) {
		dev_err(&pdev->dev, "failed to name device: %d\n", ret);
		goto err_reset;
	}
	cdev_init(&fdev->cdev, &flaxnpu_fops);
	fdev->cdev.owner = THIS_MODULE;
	ret = cdev_device_add(&fdev->cdev, &fdev->dev);
	if (ret) {
		dev_err(&pdev->dev, "failed to add char device: %d\n", ret);
		goto err_reset;
	}
	pci_set_drvdata(pdev, fdev);
	dev_info(&pdev->dev, "%s: firmware %u.%u.%u, hardware ABI %u.%u, device peer %u, %u ring entries\n",
		 dev_name(&fdev->dev), fdev->fw_version >> 16, (fdev->fw_version >> 8) & 0xff,
		 fdev->fw_version & 0xff, FNPU_HW_ABI_MAJOR, FNPU_HW_ABI_MINOR, peer,
		 fdev->ring_entries);
	return 0;

err_reset:
	fdev->alive = false;
	flaxnpu_pm_shutdown(fdev);
err_irq:
	flaxnpu_hw_irq_fini(fdev);
err_fw:
	flaxnpu_fw_fini(fdev);
err_put:
	put_device(&fdev->dev);
	return ret;
}

static void flaxnpu_remove(struct pci_dev *pdev)
{
	struct flaxnpu_device *fdev = pci_get_drvdata(pdev);
	struct flaxnpu_ctx *ctx;

	/* No new opens, and sysfs writers (inject_fault) are drained. */
	cdev_device_del(&fdev->cdev, &fdev->dev);
	down_write(&fdev->alive_sem);
	fdev->alive = false;
	up_write(&fdev->alive_sem);
	flaxnpu_pm_shutdown(fdev);
	spin_lock(&fdev->ctx_lock);
	list_for_each_entry(ctx, &fdev->contexts, node)
		wake_up_interruptible_all(&ctx->wq);
	spin_unlock(&fdev->ctx_lock);
	flaxnpu_hw_irq_fini(fdev);
	/* The interrupts may have queued one more recovery before they were freed. */
	cancel_work_sync(&fdev->recover_work);
	flaxnpu_fw_fini(fdev);
	dev_info(&pdev->dev, "%s removed\n", dev_name(&fdev->dev));
	put_device(&fdev->dev);
}

static const struct pci_device_id flaxnpu_pci_ids[] = {
	{ PCI_DEVICE(FNPU_PCI_VENDOR_ID, FNPU_PCI_DEVICE_ID) },
	{ }
};
MODULE_DEVICE_TABLE(pci, flaxnpu_pci_ids);

static struct pci_driver flaxnpu_pci_driver = {
	.name = FLAXNPU_NAME,
	.id_table = flaxnpu_pci_ids,
	.probe = flaxnpu_probe,
	.remove = flaxnpu_remove,
};

static int __init flaxnpu_init(void)
{
	int ret;

	ret = alloc_chrdev_region(&flaxnpu_devt, 0, FLAXNPU_MAX_DEVICES, FLAXNPU_NAME);
	if (ret)
		return ret;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	flaxnpu_class = class_create(FLAXNPU_NAME);
#else
	flaxnpu_class = class_create(THIS_MODULE, FLAXNPU_NAME);
#endif
	if (IS_ERR(flaxnpu_class)) {
		ret = PTR_ERR(flaxnpu_class);
		goto err_region;
	}
	ret = pci_register_driver(&flaxnpu_pci_driver);
	if (ret)
		goto err_class;
	return 0;

err_class:
	class_destroy(flaxnpu_class);
err_region:
	unregister_chrdev_region(flaxnpu_devt, FLAXNPU_MAX_DEVICES);
	return ret;
}

static void __exit flaxnpu_exit_module(void)
{
	pci_unregister_driver(&flaxnpu_pci_driver);
	class_destroy(flaxnpu_class);
	unregister_chrdev_region(flaxnpu_devt, FLAXNPU_MAX_DEVICES);
}

module_init(flaxnpu_init);
module_exit(flaxnpu_exit_module);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("flaxnpu: NPU that runs Flax models (emulated behind ivshmem-doorbell)");
