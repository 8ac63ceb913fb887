#!/usr/bin/env bash
# Installs the Debian packages calico-docker's tests and demo need. Idempotent: does
# nothing when everything is present, so it is cheap to run before every test run.
set -euo pipefail

need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
check etcd etcd-server
check etcdctl etcd-client
check bird bird2
check nft nftables
check ping iputils-ping
check dockerd docker.io
check protoc protobuf-compiler
check ip iproute2
check curl curl
check git git
check sysctl procps
check openssl openssl
check nsenter util-linux
check tar tar
[ -x /bin/busybox ] || need+=(busybox-static)

if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    if [ "$(id -u)" -ne 0 ]; then
        echo "need root to install packages (run as root)" >&2
        exit 1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The packaged services must not run on their own: tests start private instances on
# free ports, and a system etcd or bird would only get in the way.
for svc in etcd bird; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
done
exit 0
