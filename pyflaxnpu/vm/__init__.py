"""`flaxnpu vm`: boot Debian's 6.1 kernel under QEMU with N emulated NPUs and run one command in it.

kernel.py fetches and unpacks the kernel, initramfs.py builds the guest's /init, driver.py builds the
kernel module, devices.py runs the device-model servers, qemu.py builds QEMU's command line, run.py ties
them together; cli.py is the `flaxnpu vm` subcommand.
"""
