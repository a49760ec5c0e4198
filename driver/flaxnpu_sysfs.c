// SPDX-License-Identifier: GPL-2.0
/* flaxnpu: sysfs attributes of /sys/class/flaxnpu/flaxnpuN. */
#include <linux/device.h>
#include <linux/sysfs.h>

#include "flaxnpu_drv.h"
#include "flaxnpu_hw.h"
#include "flaxnpu_pm.h"

static struct flaxnpu_device *to_fdev(struct device *dev)
{
	return container_of(dev, struct flaxnpu_device, dev);
}

static ssize_t fw_version_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	u32 v = to_fdev(dev)->fw_version;

	return sysfs_emit(buf, "%u.%u.%u\n", v >> 16, (v >> 8) & 0xff, v & 0xff);
}
static DEVICE_ATTR_RO(fw_version);

static ssize_t state_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%s\n", flaxnpu_hw_state_name(REG_RD(to_fdev(dev), STATE)));
}
static DEVICE_ATTR_RO(state);

static ssize_t jobs_done_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", READ_ONCE(to_fdev(dev)->jobs_done));
}
static DEVICE_ATTR_RO(jobs_done);

static ssize_t jobs_failed_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", READ_ONCE(to_fdev(dev)->jobs_failed));
}
static DEVICE_ATTR_RO(jobs_failed);

static ssize_t resets_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", READ_ONCE(to_fdev(dev)->resets));
}
static DEVICE_ATTR_RO(resets);

/* Test knob: "hang" makes the device's next job never complete. */
static ssize_t inject_fault_store(struct device *dev, struct device_attribute *attr,
				  const char *buf, size_t count)
{
	int ret;

	if (!sysfs_streq(buf, "hang"))
		return -EINVAL;
	ret = flaxnpu_pm_inject(to_fdev(dev), FNPU_FAULT_HANG);
	if (ret)
		return ret;
	return count;
}
static DEVICE_ATTR_WO(inject_fault);

/* Diagnostic: each read is one control-doorbell round trip, in nanoseconds. */
static ssize_t ping_ns_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	u64 ns;
	int ret = flaxnpu_pm_ping(to_fdev(dev), &ns);

	return ret ? ret : sysfs_emit(buf, "%llu\n", ns);
}
static DEVICE_ATTR_RO(ping_ns);

static struct attribute *flaxnpu_attrs[] = {
	&dev_attr_fw_version.attr,
	&dev_attr_state.attr,
	&dev_attr_jobs_done.attr,
	&dev_attr_jobs_failed.attr,
	&dev_attr_resets.attr,
	&dev_attr_inject_fault.attr,
	&dev_attr_ping_ns.attr,
	NULL,
};

static const struct attribute_group flaxnpu_attr_group = {
	.attrs = flaxnpu_attrs,
};

const struct attribute_group *flaxnpu_sysfs_groups[] = {
	&flaxnpu_attr_group,
	NULL,
};
