/* One submission ring entry from fetch to its completion record. */
#ifndef FW_JOB_H
#define FW_JOB_H

#include "fnpu_hw.h"
#include "compiler.h"

/*
 * Fetch ring entry `index`, check it, run it, and fill *cpl (status, op_index, info, cycles, sq_seq,
 * job_id; seq stays 0: the device stamps it). Returns the job's status, the same as cpl->status.
 * A bad job only ends itself: the caller posts the completion and moves on to the next entry.
 */
FW_MUST_CHECK enum fnpu_status job_run(uint32_t index, struct fnpu_cq_entry *cpl);

#endif /* FW_JOB_H */
