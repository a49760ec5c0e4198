// SPDX-License-Identifier: GPL-2.0
/*
 * flaxnpu: firmware image load, field-by-field check, boot handshake.
 *
 * The device checks the image again when it boots it; checking here first
 * turns a bad file into a message naming the field instead of a device
 * fault code, and refuses it before any DMA.
 */
#include <linux/crc32.h>
#include <linux/dma-mapping.h>
#include <linux/firmware.h>
#include <linux/module.h>

#include "flaxnpu_fw.h"
#include "flaxnpu_hw.h"
#include "flaxnpu_job.h"

static char *fw_name = FLAXNPU_FW_NAME;
module_param(fw_name, charp, 0444);
MODULE_PARM_DESC(fw_name, "firmware image under /lib/firmware (test knob)");
MODULE_FIRMWARE(FLAXNPU_FW_NAME);

static int flaxnpu_fw_check(struct device *dev, const u8 *data, size_t len)
{
	const struct fnpu_fw_header *h = (const void *)data;
	u32 code, crc;

	if (len < sizeof(*h)) {
		dev_err(dev, "firmware %s is %zu bytes, shorter than its %zu-byte header\n",
			fw_name, len, sizeof(*h));
		return -EINVAL;
	}
	if (le32_to_cpu(h->magic) != FNPU_FW_MAGIC) {
		dev_err(dev, "firmware %s has magic 0x%08x, expected 0x%08x: not a flaxnpu image\n",
			fw_name, le32_to_cpu(h->magic), FNPU_FW_MAGIC);
		return -EINVAL;
	}
	if (le16_to_cpu(h->abi_major) != FNPU_HW_ABI_MAJOR) {
		dev_err(dev, "firmware %s is built for hardware ABI %u.%u, this driver speaks %u.%u\n",
			fw_name, le16_to_cpu(h->abi_major), le16_to_cpu(h->abi_minor),
			FNPU_HW_ABI_MAJOR, FNPU_HW_ABI_MINOR);
		return -EINVAL;
	}
	if (le32_to_cpu(h->header_size) != sizeof(*h)) {
		dev_err(dev, "firmware %s header_size is %u, expected %zu\n",
			fw_name, le32_to_cpu(h->header_size), sizeof(*h));
		return -EINVAL;
	}
	code = le32_to_cpu(h->image_size);
	if (!code || code > FNPU_FW_MAX_IMAGE || code > len - sizeof(*h)) {
		dev_err(dev, "firmware %s image_size %u does not fit: file holds %zu bytes of code, the core at most %u\n",
			fw_name, code, len - sizeof(*h), FNPU_FW_MAX_IMAGE);
		return -EINVAL;
	}
	if (le32_to_cpu(h->entry) < le32_to_cpu(h->load_addr) ||
	    (u64)le32_to_cpu(h->entry) >= (u64)le32_to_cpu(h->load_addr) + code) {
		dev_err(dev, "firmware %s entry 0x%x lies outside its code [0x%x, +0x%x)\n",
			fw_name, le32_to_cpu(h->entry), le32_to_cpu(h->load_addr), code);
		return -EINVAL;
	}
	/* crc32_le(~0, ...) ^ ~0 is the IEEE CRC-32 that zlib and the packer compute. */
	crc = crc32_le(~0U, data + sizeof(*h), code) ^ ~0U;
	if (crc != le32_to_cpu(h->crc32)) {
		dev_err(dev, "firmware %s is corrupted: CRC-32 0x%08x, header says 0x%08x\n",
			fw_name, crc, le32_to_cpu(h->crc32));
		return -EINVAL;
	}
	if (h->flags) {
		dev_err(dev, "firmware %s has unknown flags 0x%x\n", fw_name, le32_to_cpu(h->flags));
		return -EINVAL;
	}
	if (h->reserved0 || h->reserved1 || h->reserved2 || h->reserved3) {
		dev_err(dev, "firmware %s has non-zero reserved header fields\n", fw_name);
		return -EINVAL;
	}
	return 0;
}

/* Request, check and copy the image into a coherent buffer kept for reboots. */
int flaxnpu_fw_load(struct flaxnpu_device *fdev)
{
	struct device *dev = flaxnpu_pdev(fdev);
	const struct fnpu_fw_header *h;
	const struct firmware *fw;
	size_t size;
	int ret;

	ret = request_firmware(&fw, fw_name, dev);
	if (ret) {
		dev_err(dev, "failed to load firmware /lib/firmware/%s: %d (install firmware/build/flaxnpu-fw.bin there)\n",
			fw_name, ret);
		return ret;
	}
	ret = flaxnpu_fw_check(dev, fw->data, fw->size);
	if (ret)
		goto out;
	h = (const void *)fw->data;
	size = sizeof(*h) + le32_to_cpu(h->image_size);
	fdev->fw_buf = dma_alloc_coherent(dev, size, &fdev->fw_dma, GFP_KERNEL);
	if (!fdev->fw_buf) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(fdev->fw_buf, fw->data, size);
	fdev->fw_size = size;
	fdev->fw_version = le32_to_cpu(h->fw_version);
out:
	release_firmware(fw);
	return ret;
}

void flaxnpu_fw_fini(struct flaxnpu_device *fdev)
{
	if (fdev->fw_buf)
		dma_free_coherent(flaxnpu_pdev(fdev), fdev->fw_size, fdev->fw_buf, fdev->fw_dma);
	fdev->fw_buf = NULL;
}

/*
 * RESET, then BOOT with fresh rings; returns when the firmware answered the
 * handshake. Called with fdev->lock held and no job in flight.
 */
int flaxnpu_fw_boot(struct flaxnpu_device *fdev)
{
	struct device *dev = flaxnpu_pdev(fdev);
	u32 state, ver;
	int ret;

	lockdep_assert_held(&fdev->lock);
	WRITE_ONCE(fdev->ready, false);
	ret = flaxnpu_hw_ctrl(fdev, FNPU_CTRL_RESET, fdev->tmo.ctrl_ms);
	if (ret)
		return ret;
	state = REG_RD(fdev, STATE);
	if (state != FNPU_STATE_OFF) {
		dev_err(dev, "device is %s after RESET, expected off\n", flaxnpu_hw_state_name(state));
		return -EIO;
	}
	flaxnpu_job_rings_reset(fdev);
	REG_WR64(fdev, FW_ADDR, fdev->fw_dma);
	REG_WR(fdev, FW_SIZE, fdev->fw_size);
	REG_WR64(fdev, SQ_BASE, fdev->sq_dma);
	REG_WR(fdev, SQ_ENTRIES, fdev->ring_entries);
	REG_WR64(fdev, CQ_BASE, fdev->cq_dma);
	REG_WR(fdev, CQ_ENTRIES, fdev->ring_entries);
	REG_WR(fdev, SQ_TAIL, 0);
	REG_WR(fdev, CQ_HEAD, 0);
	ret = flaxnpu_hw_ctrl(fdev, FNPU_CTRL_BOOT, fdev->tmo.boot_ms);
	if (ret)
		return ret;
	state = REG_RD(fdev, STATE);
	if (state != FNPU_STATE_READY) {
		dev_err(dev, "device refused the firmware: state %s, error 0x%x, info 0x%x\n",
			flaxnpu_hw_state_name(state), REG_RD(fdev, ERROR), REG_RD(fdev, ERROR_INFO));
		return -EIO;
	}
	ver = REG_RD(fdev, FW_VERSION);
	if (ver != fdev->fw_version)
		dev_warn(dev, "firmware reports version 0x%x, its header 0x%x\n", ver, fdev->fw_version);
	WRITE_ONCE(fdev->ready, true);
	dev_dbg(dev, "firmware %u.%u.%u ready\n", ver >> 16, (ver >> 8) & 0xff, ver & 0xff);
	return 0;
}
