/* SPDX-License-Identifier: GPL-2.0 */
/* flaxnpu: firmware image load, field-by-field check, boot handshake. */
#ifndef FLAXNPU_FW_H
#define FLAXNPU_FW_H

#include "flaxnpu_drv.h"

int flaxnpu_fw_load(struct flaxnpu_device *fdev);
void flaxnpu_fw_fini(struct flaxnpu_device *fdev);
int flaxnpu_fw_boot(struct flaxnpu_device *fdev);

#endif
