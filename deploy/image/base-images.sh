#!/bin/sh
# Makes the base images the Dockerfile's FROM lines name, from Debian packages with mmdebstrap,
# so that `make image` builds with podman where no registry is reachable (run by `make image`).
# An image already present is kept, whether pulled or made here. Each root filesystem is cached
# under $1 by the hash of this script, which holds the recipes, so a machine whose image store was wiped
# imports it again in seconds instead of minutes.
set -eu
cache=$1
dockerfile=${2:-Dockerfile}

# debian:bookworm-slim as Debian publishes it: minbase with a merged /usr (usr-is-merged, not
# usrmerge and its perl), without manuals, docs and locales.
make_bookworm_slim() {
	mmdebstrap --variant=minbase --mode=root --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
		--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
		--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
		--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
		bookworm "$1"
}

key=$(sha256sum "$0" | cut -c1-16)

mkdir -p "$cache"
for name in $(sed -n 's/^FROM \([^ ]*\).*/\1/p' "$dockerfile" | sort -u); do
	case $name in
	scratch) continue ;;
	debian:bookworm-slim) recipe=make_bookworm_slim ;;
	*) echo "base-images.sh: no recipe for $name, the Dockerfile's FROM" >&2; exit 1 ;;
	esac
	if podman image exists "$name"; then
		continue
	fi
	tarball="$cache/$(echo "$name" | tr ':/' '__')-$key.tar"
	if [ ! -s "$tarball" ]; then
		echo "making $name from Debian packages: $tarball"
		"$recipe" "$cache/partial-$key.tar"
		mv "$cache/partial-$key.tar" "$tarball"
	fi
	podman import --quiet --change 'CMD ["bash"]' "$tarball" "$name" >/dev/null
	echo "imported $name from $tarball"
done
