/* Firmware version: reported in the boot handshake (CORE_FW_VERSION) and the image header.
 * mkimage.py reads these three lines; keep their form. */
#ifndef FW_VERSION_H
#define FW_VERSION_H

#define FW_VERSION_MAJOR 1
#define FW_VERSION_MINOR 2
#define FW_VERSION_PATCH 0

#define FW_VERSION ((FW_VERSION_MAJOR << 16) | (FW_VERSION_MINOR << 8) | FW_VERSION_PATCH)

#endif /* FW_VERSION_H */
