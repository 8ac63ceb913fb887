#!/usr/bin/env bash
# Builds the images of calico-docker's own components locally (there is no registry to
# pull them from), for `calicoctl node --docker` and `calicoctl master --docker`:
#
#   calico-docker/node:VERSION    calico-node, calicoctl, BIRD (bird, birdc), nft and
#                                 iptables (the agent runs them), entrypoint calico-node
#   calico-docker/master:VERSION  calicoctl, entrypoint calicoctl (`calicoctl master`)
#
# VERSION is calicoctl's own (`calicoctl --version`), the tag calicoctl looks for. Each
# image is a rootfs made of the binaries from --bin-dir (default: a release build, made
# here) and this host's bird2, nftables and iptables, with the shared libraries ldd
# lists for them, imported with `docker import`: no network access is needed.
#
# Usage: scripts/build-images.sh [--bin-dir DIR] [-H unix:///PATH]...
#   --bin-dir DIR  take calico-node and calicoctl from DIR (e.g. target/debug) instead
#                  of building them with `cargo build --release`
#   -H HOST        import into this dockerd (repeat for several); default: the docker
#                  CLI's own (DOCKER_HOST, else the local socket)
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=""
hosts=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir="$2"; shift 2 ;;
        -H|--docker-host) hosts+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-images.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$bin_dir" ]; then
    # shellcheck disable=SC1091
    [ -f scripts/cargo-env.sh ] && . scripts/cargo-env.sh
    cargo build --release -p calico-agent -p calicoctl >&2
    bin_dir=target/release
fi
for b in calico-node calicoctl; do
    [ -x "$bin_dir/$b" ] || { echo "build-images.sh: no $bin_dir/$b" >&2; exit 1; }
done
for tool in bird birdc nft iptables-save ldd tar docker; do
    command -v "$tool" >/dev/null || {
        echo "build-images.sh: '$tool' is missing (scripts/install-deps.sh installs bird2, nftables, iptables and docker.io)" >&2
        exit 1
    }
done
version=$("$bin_dir/calicoctl" --version | awk '{print $2}')

work=$(mktemp -d /tmp/calico-images.XXXXXX)
trap 'rm -rf "$work"' EXIT

# copy_bin ROOT SRC DEST: the binary (debug info stripped: debug builds are ~100 MB)
# and every library ldd resolves for it, at the same paths.
copy_bin() {
    local root=$1 src=$2 dest=$3
    mkdir -p "$root$(dirname "$dest")"
    if command -v strip >/dev/null; then
        strip --strip-debug -o "$root$dest" "$src"
    else
        cp -L "$src" "$root$dest"
    fi
    copy_libs "$root" "$src"
}

copy_libs() {
    local root=$1 src=$2 lib
    for lib in $(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
        [ -e "$root$lib" ] || cp -L --parents "$lib" "$root"
    done
}

base_rootfs() {
    local root=$1
    mkdir -p "$root"/{etc,tmp,run,proc,sys,dev,usr/bin,usr/sbin,usr/lib,usr/lib64,var}
    # Merged /usr, as Debian: a library ldd finds under /lib lands where its users
    # (iptables looks for its extensions in /usr/lib/<arch>/xtables) look for it.
    for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
    chmod 1777 "$root/tmp"
    ln -s ../run "$root/var/run"
    # nft prints protocol and service names from these; the agent compares what it
    # reads back with what it wrote.
    cp /etc/protocols /etc/services "$root/etc/"
    echo 'root:x:0:0:root:/root:/bin/false' >"$root/etc/passwd"
    echo 'root:x:0:' >"$root/etc/group"
}

node=$work/node
base_rootfs "$node"
copy_bin "$node" "$bin_dir/calico-node" /usr/bin/calico-node
copy_bin "$node" "$bin_dir/calicoctl" /usr/bin/calicoctl
for tool in bird birdc nft; do
    copy_bin "$node" "$(command -v "$tool")" "/usr/sbin/$tool"
done
# iptables is one multi-call binary (xtables-nft-multi or -legacy-multi: the same
# backend as the host's dockerd) with its extensions loaded at run time.
xt=$(readlink -f "$(command -v iptables-save)")
copy_bin "$node" "$xt" "/usr/sbin/$(basename "$xt")"
for name in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -s "$(basename "$xt")" "$node/usr/sbin/$name"
done
ext=$(dirname "$(ldd "$xt" | grep -o '/[^ ]*libxtables[^ ]*' | head -1)")/xtables
if [ -d "$ext" ]; then
    mkdir -p "$node$ext"
    cp -L "$ext"/*.so "$node$ext/"
    for so in "$ext"/*.so; do copy_libs "$node" "$so"; done
fi

master=$work/master
base_rootfs "$master"
copy_bin "$master" "$bin_dir/calicoctl" /usr/bin/calicoctl

import() {
    local root=$1 image=$2 entry=$3
    local h
    local targets=("${hosts[@]:-}")
    for h in "${targets[@]}"; do
        local -a flags=()
        [ -n "$h" ] && flags=(-H "$h")
        tar -C "$root" -c . | docker "${flags[@]}" import \
            --change "ENTRYPOINT [\"$entry\"]" \
            --change 'ENV PATH=/usr/sbin:/usr/bin' \
            --change "LABEL org.calico-docker.version=$version" \
            - "$image" >/dev/null
        echo "built $image ($(du -sh "$root" | cut -f1)) in dockerd ${h:-${DOCKER_HOST:-default}}"
    done
}
import "$node" "calico-docker/node:$version" /usr/bin/calico-node
import "$master" "calico-docker/master:$version" /usr/bin/calicoctl
