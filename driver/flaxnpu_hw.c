// SPDX-License-Identifier: GPL-2.0
/*
 * flaxnpu: register window access, doorbells, control commands, interrupts.
 *
 * The register window is plain shared memory (ivshmem BAR2): reads have no
 * side effects and nothing the device writes there is trusted beyond the
 * check made by whoever reads it.
 */
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/jiffies.h>

#include "flaxnpu_hw.h"
#include "flaxnpu_job.h"
#include "flaxnpu_pm.h"

u32 flaxnpu_reg_read(struct flaxnpu_device *fdev, u32 off, const char *name)
{
	u32 val = ioread32(fdev->regs + off);

	dev_dbg(flaxnpu_pdev(fdev), "rd %-12s [0x%03x] = 0x%08x\n", name, off, val);
	return val;
}

void flaxnpu_reg_write(struct flaxnpu_device *fdev, u32 off, u32 val, const char *name)
{
	dev_dbg(flaxnpu_pdev(fdev), "wr %-12s [0x%03x] = 0x%08x\n", name, off, val);
	iowrite32(val, fdev->regs + off);
}

void flaxnpu_hw_doorbell(struct flaxnpu_device *fdev, u32 vector)
{
	/*
	 * The window is mapped uncached but the rings are in cacheable RAM:
	 * make every ring and register store visible before the device wakes.
	 */
	wmb();
	dev_dbg(flaxnpu_pdev(fdev), "doorbell peer %u vector %u\n", fdev->peer, vector);
	iowrite32(fdev->peer << 16 | vector, fdev->db + IVSHMEM_REG_DOORBELL);
}

const char *flaxnpu_hw_state_name(u32 state)
{
	switch (state) {
	case FNPU_STATE_OFF:
		return "off";
	case FNPU_STATE_BOOTING:
		return "booting";
	case FNPU_STATE_READY:
		return "ready";
	case FNPU_STATE_FAULT:
		return "fault";
	default:
		return "invalid";
	}
}

static bool flaxnpu_ctrl_acked(struct flaxnpu_device *fdev, u32 seq)
{
	return REG_RD(fdev, CTRL_ACK) == seq;
}

/*
 * Send one control command and wait for its acknowledgement. Called with
 * fdev->lock held. The wait is re-checked every poll_ms so that a lost
 * IRQ_EVENT costs latency, not the command; a dead device model costs
 * exactly timeout_ms.
 */
int flaxnpu_hw_ctrl(struct flaxnpu_device *fdev, u32 cmd, unsigned int timeout_ms)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(timeout_ms);
	u32 seq = ++fdev->ctrl_seq;

	lockdep_assert_held(&fdev->lock);
	REG_WR(fdev, CTRL, cmd);
	REG_WR(fdev, CTRL_SEQ, seq);
	flaxnpu_hw_doorbell(fdev, FNPU_DOORBELL_CONTROL);
	while (!flaxnpu_ctrl_acked(fdev, seq)) {
		if (time_after(jiffies, deadline)) {
			dev_err(flaxnpu_pdev(fdev),
				"control command %u not acknowledged within %u ms (state %s, ack %u, want %u); is the device model running?\n",
				cmd, timeout_ms, flaxnpu_hw_state_name(REG_RD(fdev, STATE)),
				REG_RD(fdev, CTRL_ACK), seq);
			return -ETIMEDOUT;
		}
		wait_event_timeout(fdev->ctrl_wq, flaxnpu_ctrl_acked(fdev, seq),
				   msecs_to_jiffies(fdev->tmo.poll_ms));
	}
	return 0;
}

/* Record the arrival time here, in hard IRQ context: it ends device_ns. */
static irqreturn_t flaxnpu_cq_irq(int irq, void *arg)
{
	struct flaxnpu_device *fdev = arg;

	WRITE_ONCE(fdev->irq_time, ktime_get());
	return IRQ_WAKE_THREAD;
}

static irqreturn_t flaxnpu_cq_thread(int irq, void *arg)
{
	flaxnpu_job_process_completions(arg);
	return IRQ_HANDLED;
}

static irqreturn_t flaxnpu_event_irq(int irq, void *arg)
{
	struct flaxnpu_device *fdev = arg;

	wake_up_all(&fdev->ctrl_wq);
	/* A firmware that faults while serving jobs never completes them. */
	if (READ_ONCE(fdev->ready) && REG_RD(fdev, STATE) == FNPU_STATE_FAULT)
		flaxnpu_pm_schedule_recovery(fdev);
	return IRQ_HANDLED;
}

int flaxnpu_hw_irq_init(struct flaxnpu_device *fdev)
{
	struct pci_dev *pdev = fdev->pdev;
	int ret;

	ret = pci_alloc_irq_vectors(pdev, 2, 2, PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_err(&pdev->dev, "failed to allocate 2 MSI-X vectors: %d\n", ret);
		return ret;
	}
	ret = request_threaded_irq(pci_irq_vector(pdev, FNPU_IRQ_COMPLETION),
				   flaxnpu_cq_irq, flaxnpu_cq_thread, 0,
				   "flaxnpu-cq", fdev);
	if (ret) {
		dev_err(&pdev->dev, "failed to request completion irq: %d\n", ret);
		goto err_vectors;
	}
	ret = request_irq(pci_irq_vector(pdev, FNPU_IRQ_EVENT), flaxnpu_event_irq,
			  0, "flaxnpu-event", fdev);
	if (ret) {
		dev_err(&pdev->dev, "failed to request event irq: %d\n", ret);
		goto err_cq;
	}
	return 0;

err_cq:
	free_irq(pci_irq_vector(pdev, FNPU_IRQ_COMPLETION), fdev);
err_vectors:
	pci_free_irq_vectors(pdev);
	return ret;
}

void flaxnpu_hw_irq_fini(struct flaxnpu_device *fdev)
{
	struct pci_dev *pdev = fdev->pdev;

	free_irq(pci_irq_vector(pdev, FNPU_IRQ_EVENT), fdev);
	free_irq(pci_irq_vector(pdev, FNPU_IRQ_COMPLETION), fdev);
	pci_free_irq_vectors(pdev);
}
