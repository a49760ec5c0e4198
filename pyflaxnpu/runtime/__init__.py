"""Running programs: the user-space driver and one backend per way of reaching a device."""
