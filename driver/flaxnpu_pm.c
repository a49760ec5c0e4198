// SPDX-License-Identifier: GPL-2.0
/*
 * flaxnpu: timeouts, device reset, recovery from hangs and faults.
 *
 * Every wait of the driver is defined here and can be raised together for
 * slow transports (a TCG guest talking to a Python device model is ~1000x
 * slower than silicon) or lowered by tests.
 */
#include <linux/log2.h>
#include <linux/module.h>

#include "flaxnpu_fw.h"
#include "flaxnpu_hw.h"
#include "flaxnpu_job.h"
#include "flaxnpu_pm.h"

static unsigned int ctrl_timeout_ms = 5000;
module_param(ctrl_timeout_ms, uint, 0444);
MODULE_PARM_DESC(ctrl_timeout_ms, "wait for a control command acknowledgement (ms)");

static unsigned int boot_timeout_ms = 10000;
module_param(boot_timeout_ms, uint, 0444);
MODULE_PARM_DESC(boot_timeout_ms, "wait for the firmware boot handshake (ms)");

static unsigned int job_timeout_ms = 10000;
module_param(job_timeout_ms, uint, 0644);
MODULE_PARM_DESC(job_timeout_ms, "device without progress on the oldest job before it times out and the device is reset (ms)");

static unsigned int ring_entries = 256;
module_param(ring_entries, uint, 0444);
MODULE_PARM_DESC(ring_entries, "submission/completion ring entries (power of two, 2..4096)");

static bool recovery = true;
module_param(recovery, bool, 0644);
MODULE_PARM_DESC(recovery, "reset and reboot the device after a hang or fault (test knob: off leaves it for inspection)");

void flaxnpu_pm_timeouts_init(struct flaxnpu_device *fdev)
{
	fdev->tmo.ctrl_ms = max(ctrl_timeout_ms, 1U);
	fdev->tmo.boot_ms = max(boot_timeout_ms, 1U);
	fdev->tmo.job_ms = max(READ_ONCE(job_timeout_ms), 1U);
	fdev->tmo.poll_ms = 10;
}

/* job_timeout_ms is writable at run time: tests lower it before hanging the device. */
void flaxnpu_pm_timeouts_refresh(struct flaxnpu_device *fdev)
{
	fdev->tmo.job_ms = max(READ_ONCE(job_timeout_ms), 1U);
}

u32 flaxnpu_pm_ring_entries(void)
{
	return clamp_t(u32, roundup_pow_of_two(max(ring_entries, 2U)),
		       FNPU_RING_MIN_ENTRIES, FNPU_RING_MAX_ENTRIES);
}

/* RESET from any state; with fdev->lock held. */
int flaxnpu_pm_reset(struct flaxnpu_device *fdev)
{
	u32 state;
	int ret;

	lockdep_assert_held(&fdev->lock);
	WRITE_ONCE(fdev->ready, false);
	ret = flaxnpu_hw_ctrl(fdev, FNPU_CTRL_RESET, fdev->tmo.ctrl_ms);
	if (ret)
		return ret;
	state = REG_RD(fdev, STATE);
	if (state != FNPU_STATE_OFF) {
		dev_err(flaxnpu_pdev(fdev), "device is %s after RESET, expected off\n",
			flaxnpu_hw_state_name(state));
		return -EIO;
	}
	return 0;
}

/*
 * Reset the device, fail every job in flight (the hung one with TIMEOUT,
 * the others with ABORTED) and boot the firmware again. Jobs are failed
 * only after the RESET was acknowledged, so that the device no longer
 * writes into buffers their owners may free at once. A device that does not
 * acknowledge loses bus mastering instead.
 */
void flaxnpu_pm_recover_locked(struct flaxnpu_device *fdev, struct flaxnpu_job *hung,
			       struct list_head *done)
{
	struct device *dev = flaxnpu_pdev(fdev);
	int ret;

	lockdep_assert_held(&fdev->lock);
	fdev->resets++;
	if (!READ_ONCE(recovery)) {
		WRITE_ONCE(fdev->ready, false);
		flaxnpu_job_abort_all(fdev, hung, done);
		dev_warn(dev, "recovery is off: device left as it is; reload the driver\n");
		return;
	}
	ret = flaxnpu_pm_reset(fdev);
	if (ret)
		pci_clear_master(fdev->pdev);
	flaxnpu_job_abort_all(fdev, hung, done);
	if (ret) {
		dev_err(dev, "failed to reset the device: %d; jobs fail until it answers\n", ret);
		return;
	}
	pci_set_master(fdev->pdev);
	ret = flaxnpu_fw_boot(fdev);
	if (ret)
		dev_err(dev, "failed to reboot the firmware: %d\n", ret);
	else
		dev_info(dev, "device reset and firmware rebooted (reset %llu)\n", fdev->resets);
}

/* A submit found the device down: try once to bring it back. */
int flaxnpu_pm_revive(struct flaxnpu_device *fdev)
{
	int ret;

	lockdep_assert_held(&fdev->lock);
	if (fdev->removing || !READ_ONCE(recovery))
		return -EIO;
	ret = flaxnpu_pm_reset(fdev);
	if (!ret) {
		pci_set_master(fdev->pdev);
		ret = flaxnpu_fw_boot(fdev);
	}
	if (ret) {
		dev_err_ratelimited(flaxnpu_pdev(fdev), "device is down and did not come back: %d\n", ret);
		return -EIO;
	}
	fdev->resets++;
	return 0;
}

void flaxnpu_pm_schedule_recovery(struct flaxnpu_device *fdev)
{
	if (READ_ONCE(fdev->removing))
		return;
	WRITE_ONCE(fdev->recover_pending, true);
	schedule_work(&fdev->recover_work);
}

void flaxnpu_pm_recover_work(struct work_struct *work)
{
	struct flaxnpu_device *fdev = container_of(work, struct flaxnpu_device, recover_work);
	LIST_HEAD(done);
	u32 state;

	mutex_lock(&fdev->lock);
	if (fdev->removing || !fdev->ready || !fdev->recover_pending)
		goto out;
	fdev->recover_pending = false;
	state = REG_RD(fdev, STATE);
	if (state == FNPU_STATE_FAULT)
		dev_err(flaxnpu_pdev(fdev), "device faulted: error 0x%x, info 0x%x\n",
			REG_RD(fdev, ERROR), REG_RD(fdev, ERROR_INFO));
	flaxnpu_pm_recover_locked(fdev, NULL, &done);
out:
	mutex_unlock(&fdev->lock);
	flaxnpu_job_put_list(&done);
}

/* Test knob behind sysfs inject_fault: arm a device fault for the next job. */
int flaxnpu_pm_inject(struct flaxnpu_device *fdev, u32 kind)
{
	int ret;

	mutex_lock(&fdev->lock);
	if (!fdev->ready) {
		ret = -EIO;
		goto out;
	}
	REG_WR(fdev, FAULT_KIND, kind);
	ret = flaxnpu_hw_ctrl(fdev, FNPU_CTRL_INJECT, fdev->tmo.ctrl_ms);
	if (!ret && REG_RD(fdev, ERROR) == FNPU_STATUS_CTRL_UNKNOWN &&
	    REG_RD(fdev, ERROR_INFO) == FNPU_CTRL_INJECT)
		ret = -EOPNOTSUPP;	/* a device model without the knob */
out:
	mutex_unlock(&fdev->lock);
	return ret;
}

/*
 * Liveness ping behind sysfs ping_ns: one CTRL_NOP through the control
 * doorbell and back on IRQ_EVENT, with no firmware in the path. It is the
 * floor under every job's round trip.
 */
int flaxnpu_pm_ping(struct flaxnpu_device *fdev, u64 *ns)
{
	ktime_t start;
	int ret;

	mutex_lock(&fdev->lock);
	start = ktime_get();
	ret = flaxnpu_hw_ctrl(fdev, FNPU_CTRL_NOP, fdev->tmo.ctrl_ms);
	*ns = ktime_to_ns(ktime_sub(ktime_get(), start));
	mutex_unlock(&fdev->lock);
	return ret;
}

/* Remove: no more recovery, every job in flight aborted, the device reset. */
void flaxnpu_pm_shutdown(struct flaxnpu_device *fdev)
{
	LIST_HEAD(done);

	mutex_lock(&fdev->lock);
	fdev->removing = true;
	mutex_unlock(&fdev->lock);
	cancel_delayed_work_sync(&fdev->tdr);
	cancel_work_sync(&fdev->recover_work);

	mutex_lock(&fdev->lock);
	if (flaxnpu_pm_reset(fdev))
		pci_clear_master(fdev->pdev);
	flaxnpu_job_abort_all(fdev, NULL, &done);
	mutex_unlock(&fdev->lock);
	flaxnpu_job_put_list(&done);
}
