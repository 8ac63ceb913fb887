#!/usr/bin/env bash
# Proves that scripts/install-deps.sh installs everything the build needs, on a machine
# that has nothing but a minimal Debian: this machine's own packages cannot hide a
# missing one here.
#
# What it does:
# 1. mmdebstrap makes a minimal Debian root (variant minbase: dpkg, apt, coreutils, bash;
#    no compiler, no protoc) of this machine's release, from this machine's apt sources;
# 2. bind-mounts the Rust toolchain (its sysroot) and the cargo registry read-only, and
#    puts the committed tree (git archive HEAD: what a clone gets, not uncommitted
#    edits) in the root;
# 3. in a chroot: runs install-deps.sh, checks every package it names is installed and
#    that a second run installs nothing, checks the commands the tests and the demo call,
#    then `cargo build --workspace --locked --offline` from nothing.
# Any failure fails the script. Everything it mounts and makes is removed at the end,
# also on failure or Ctrl-C. Needs root and mmdebstrap (installed here if missing).
#
#   scripts/fresh-check.sh            # build the workspace (debug)
#   FRESH_KEEP=1 scripts/fresh-check.sh   # keep the root for a look (prints where)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)

if [ "$(id -u)" -ne 0 ]; then
    exec sudo -E "$0" "$@"
fi
if ! dpkg-query -W -f='${db:Status-Status}' mmdebstrap 2>/dev/null | grep -qx installed; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
fi

sysroot=$(rustc --print sysroot)
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# The registry must hold every crate of Cargo.lock: the build in the root is offline.
# On a fresh machine this fills it from crates.io (the only download this script makes).
(cd "$repo" && cargo fetch --locked -q)
[ -d "$cargo_home/registry" ] || { echo "fresh-check: cargo fetch left no registry at $cargo_home/registry" >&2; exit 1; }

. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -s "$f" ] && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || { echo "fresh-check: no apt sources on this machine" >&2; exit 1; }

root=$(mktemp -d /var/tmp/calico-fresh.XXXXXX)
mounts=()
cleanup() {
    local rc=$?
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount -l "${mounts[$i]}" 2>/dev/null || true
    done
    if [ -n "${FRESH_KEEP:-}" ]; then
        echo "fresh-check: root kept at $root" >&2
    else
        rm -rf --one-file-system "$root"
    fi
    exit $rc
}
trap cleanup EXIT INT TERM

echo "fresh-check: minimal Debian $suite in $root" >&2
mmdebstrap --quiet --variant=minbase "$suite" "$root" "${sources[@]}"

bind() { # bind SRC DST [ro]
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    mounts+=("$root$2")
    if [ "${3:-}" = ro ]; then
        mount -o remount,bind,ro "$root$2"
    fi
}
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
bind /dev /dev
bind /dev/pts /dev/pts
bind /sys /sys ro
bind "$sysroot" /opt/rust ro
bind "$cargo_home/registry" /opt/cargo/registry ro
mkdir -p "$root/src"
git -C "$repo" archive HEAD | tar -x -C "$root/src"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Packages' maintainer scripts must not start services (dockerd, etcd) in the root.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

cat > "$root/fresh-check-inner.sh" <<'INNER'
#!/bin/bash
set -euo pipefail
export PATH=/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export CARGO_HOME=/opt/cargo CARGO_TARGET_DIR=/build/target CARGO_NET_OFFLINE=true
cd /src
t0=$(date +%s)
bash scripts/install-deps.sh
t1=$(date +%s)
echo "fresh-check: install-deps took $((t1 - t0)) s" >&2
# Every package the script names is installed, and a second run installs nothing.
again=$(bash scripts/install-deps.sh 2>&1)
if [ -n "$again" ]; then
    echo "fresh-check: a second install-deps run was not a no-op: $again" >&2
    exit 1
fi
missing=()
for c in gcc cc protoc etcd etcdctl bird birdc nft iptables ip6tables dockerd docker ping ip \
         sysctl ps openssl nsenter unshare tar curl git chromium promtool; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
[ -x /bin/busybox ] || missing+=(/bin/busybox)
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(google/protobuf/descriptor.proto)
if [ ${#missing[@]} -gt 0 ]; then
    echo "fresh-check: missing after install-deps: ${missing[*]}" >&2
    exit 1
fi
cargo build --workspace --locked --offline
t2=$(date +%s)
echo "fresh-check: cargo build --workspace took $((t2 - t1)) s" >&2
INNER
chmod 0755 "$root/fresh-check-inner.sh"
# HOME and the rest of the environment are the root's, not this machine's.
env -i TERM="${TERM:-dumb}" HOME=/root "$(command -v chroot)" "$root" /fresh-check-inner.sh
echo "fresh-check: passed in $(( $(date +%s) - start )) s" >&2
