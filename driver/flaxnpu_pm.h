/* SPDX-License-Identifier: GPL-2.0 */
/* flaxnpu: timeouts, device reset, recovery from hangs and faults, fault injection. */
#ifndef FLAXNPU_PM_H
#define FLAXNPU_PM_H

#include "flaxnpu_drv.h"

void flaxnpu_pm_timeouts_init(struct flaxnpu_device *fdev);
void flaxnpu_pm_timeouts_refresh(struct flaxnpu_device *fdev);
u32 flaxnpu_pm_ring_entries(void);
int flaxnpu_pm_reset(struct flaxnpu_device *fdev);
void flaxnpu_pm_recover_locked(struct flaxnpu_device *fdev, struct flaxnpu_job *hung,
			       struct list_head *done);
int flaxnpu_pm_revive(struct flaxnpu_device *fdev);
void flaxnpu_pm_schedule_recovery(struct flaxnpu_device *fdev);
void flaxnpu_pm_recover_work(struct work_struct *work);
int flaxnpu_pm_inject(struct flaxnpu_device *fdev, u32 kind);
int flaxnpu_pm_ping(struct flaxnpu_device *fdev, u64 *ns);
void flaxnpu_pm_shutdown(struct flaxnpu_device *fdev);

#endif
