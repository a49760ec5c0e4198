#!/usr/bin/env bash
# Installs everything `make demo` and `make test` need on a fresh Debian 12 machine (run as root),
# idempotently: a second run only checks stamps and returns in well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# qemu-system-x86 .. gcc-12: `flaxnpu vm` (the QEMU tier): QEMU, the guest initramfs, depmod, the driver build.
APT_PACKAGES=(gcc-riscv64-unknown-elf make qemu-system-x86 busybox-static kmod cpio xz-utils gcc-12)
VENV=.venv
PYTHON=${PYTHON:-python3}

# pip warns about every local mirror path this machine kind lists but lacks; that noise hides real errors.
pip_quiet() {
	"$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2> >(grep -v 'is ignored: it is neither' >&2)
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "bootstrap: missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
		exit 1
	fi
	echo "bootstrap: apt-get install ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The stamp names the requirements' hash, so changing a pin reinstalls and nothing else does.
want=$(sha256sum requirements.txt pyproject.toml | sha256sum | cut -c1-16)
stamp="$VENV/.bootstrap-$want"
if [ ! -f "$stamp" ]; then
	if [ ! -x "$VENV/bin/python" ]; then
		"$PYTHON" -m venv "$VENV" || {
			echo "bootstrap: '$PYTHON -m venv' failed; install python3-venv (apt-get install -y python3-venv)" >&2
			exit 1
		}
	fi
	echo "bootstrap: installing Python packages into $VENV"
	pip_quiet -r requirements.txt
	pip_quiet --no-deps -e .
	rm -f "$VENV"/.bootstrap-*
	touch "$stamp"
fi
