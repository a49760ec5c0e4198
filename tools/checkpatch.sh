#!/usr/bin/env bash
# Runs the kernel's checkpatch.pl over the driver. Debian ships it only inside the kernel source package,
# so the script fetches linux-source once (apt-get download, ~140 MB) and keeps just checkpatch's three
# files in the cache. Fails on any warning except the two that version checks for an out-of-tree module
# necessarily raise (it builds against 6.1 and the 6.12 backports).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${FLAXNPU_CACHE:-$HOME/.cache/flaxnpu}/checkpatch
cp="$cache/scripts/checkpatch.pl"
if [ ! -f "$cp" ]; then
	mkdir -p "$cache/scripts"
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' EXIT
	pkg=$(apt-cache depends linux-source 2>/dev/null | awk '/Depends: linux-source-/{print $2; exit}')
	pkg=${pkg:-linux-source-6.1}
	(cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) || {
		apt-get update -qq && (cd "$tmp" && apt-get download "$pkg" >/dev/null)
	} || { echo "checkpatch: cannot download $pkg (apt-get download $pkg)" >&2; exit 1; }
	ver=${pkg#linux-source-}
	dpkg-deb --fsys-tarfile "$tmp"/*.deb | tar -x -C "$tmp" "./usr/src/linux-source-$ver.tar.xz"
	tar -xJf "$tmp/usr/src/linux-source-$ver.tar.xz" -C "$tmp" \
		"linux-source-$ver/scripts/checkpatch.pl" "linux-source-$ver/scripts/spelling.txt" \
		"linux-source-$ver/scripts/const_structs.checkpatch"
	mv "$tmp/linux-source-$ver/scripts/"* "$cache/scripts/"
fi
files=$(ls driver/flaxnpu_*.c driver/flaxnpu_*.h)
perl "$cp" --no-tree --terse --show-types --ignore LINUX_VERSION_CODE,CONSTANT_COMPARISON -f $files
