#!/bin/busybox sh
# /init of the flaxnpu vm initramfs (busybox sh). The host's / is mounted read-only at /host and the work
# directory read-write at /host<same path>; the command runs chrooted in /host, so every path is the
# host's. Parameters come from the kernel command line (flaxnpu_vm.*), the command from <run>/cmd.sh.
# Console protocol with the host (pyflaxnpu/vm/run.py): "FLAXNPU-VM-START" before the command,
# "FLAXNPU-VM-EXIT=<status>" after it, "flaxnpu-vm: error: ..." + status 125 when the guest setup fails.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
stty -F /dev/console -onlcr 2>/dev/null  # plain \n, as the command wrote it

finish() {
	sync  # the work share is cache=loose (writeback): flush what CMD wrote before the power goes
	echo "FLAXNPU-VM-EXIT=$1"
	# isa-debug-exit: QEMU exits with (status << 1) | 1, a fallback if the console line is lost
	printf "\\$(printf %o $(($1 & 127)))" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
	poweroff -f
}
fail() { echo "flaxnpu-vm: error: $*"; finish 125; }

for arg in $(cat /proc/cmdline); do
	case "$arg" in
	flaxnpu_vm.work=*) WORK=${arg#*=} ;;
	flaxnpu_vm.run=*) RUN=${arg#*=} ;;
	flaxnpu_vm.ko=*) KO=${arg#*=} ;;
	flaxnpu_vm.fw=*) FW=${arg#*=} ;;
	esac
done

for m in $(cat /modules.order); do insmod "/modules/$m" || fail "insmod $m (virtio/9p) failed"; done
mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /host ||
	fail "mounting the host's / over 9p failed"
# Copy what the run needs before tmpfs mounts may hide it (the cache dir could be under /tmp).
cp "/host$RUN/cmd.sh" /cmd.sh || fail "no $RUN/cmd.sh visible in the guest"
if [ -n "$FW" ]; then
	# request_firmware() looks in the kernel's root, which is this initramfs, not the chroot.
	mkdir -p /lib/firmware/flaxnpu
	cp "/host$FW" /lib/firmware/flaxnpu/flaxnpu-fw.bin || fail "cannot copy the firmware $FW"
fi
if [ -n "$KO" ]; then cp "/host$KO" /flaxnpu.ko || fail "cannot copy the driver $KO"; fi

mount -t proc proc /host/proc
mount -t sysfs sys /host/sys
mount -t devtmpfs dev /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm
for d in /tmp /run /var/tmp; do mount -t tmpfs tmp "/host$d"; done
mkdir -p "/host$WORK" 2>/dev/null
# cache=loose: python imports from a venv here are ~2x faster than with cache=mmap (jax 11 s vs 18 s);
# the price is that host-side changes made while the guest runs may not be seen by the guest.
mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000 work "/host$WORK" ||
	fail "mounting the work directory $WORK over 9p failed"
# The same image for CMD: a tmpfs over the host's /lib/firmware (nothing in the guest needs the host's).
if [ -n "$FW" ] && mount -t tmpfs fw /host/lib/firmware 2>/dev/null; then
	cp -r /lib/firmware/flaxnpu /host/lib/firmware/
fi
[ -d /sys/kernel/debug ] && mount -t debugfs debugfs /host/sys/kernel/debug 2>/dev/null

if [ -n "$KO" ]; then
	insmod /flaxnpu.ko || fail "insmod $KO failed"
fi
echo "FLAXNPU-VM-START"
chroot /host /bin/sh -c "$(cat /cmd.sh)"
finish $?
