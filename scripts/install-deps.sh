#!/usr/bin/env bash
# Installs the Debian packages calico-docker's build, demo and tests need. Decides by
# package (dpkg-query), never by whether a command happens to exist: a command can be
# present without the files a package brings (protoc without the well-known .proto files
# of libprotobuf-dev, for one). Idempotent: does nothing when every package is
# installed, so it is cheap to run before every build.
#
# Runs as root (a root shell needs no sudo); a non-root user gets it through sudo.
set -euo pipefail

# One package a line, with what needs it. Keep this list the whole truth: the
# fresh-machine check (scripts/fresh-check.sh) builds in a minimal Debian root that has
# nothing else.
packages=(
    # build
    gcc                 # cc for ring (rustls) and other build scripts
    libc6-dev           # crt files and headers for linking
    protobuf-compiler   # protoc, for etcd-client's build script
    libprotobuf-dev     # google/protobuf/*.proto, which protoc needs and does not ship
    pkgconf             # build scripts that probe with pkg-config
    ca-certificates     # cargo fetching from crates.io on a fresh machine
    git                 # sync tests drive real git repositories
    # the system under test and its peers
    etcd-server         # the datastore
    etcd-client         # etcdctl, for tests and diags
    bird2               # the BGP daemon the agent supervises
    nftables            # nft, the dataplane
    iptables            # dockerd's default networking; the iptables-restore baseline
    docker.io           # dockerd for the Docker tests and the demo
    busybox-static      # the rootfs the tests `docker import` as an image
    # tools the tests and the demo call
    iproute2            # ip: namespaces, veths, routes
    iputils-ping        # ping: traffic is proven with real packets
    procps              # sysctl, ps
    openssl             # certificates for the TLS etcd tests
    util-linux          # nsenter, unshare: a second Docker host
    tar                 # diags archives
    curl                # plugin-socket and HTTP checks
    prometheus          # promtool: the agent's /metrics is linted with it
    fonts-dejavu-core   # a font for the text of `calicoctl reach -o png`
    chromium            # headless: the test that `reach -o svg` opens in a browser
)

need=()
for p in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$status" = installed ] || need+=("$p")
done

if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}" >&2
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            echo "install-deps: need root to install ${need[*]} (run as root or install sudo)" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # Check again: apt-get can succeed and still leave a package out (held, virtual).
    missing=()
    for p in "${need[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
        [ "$status" = installed ] || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "install-deps: still not installed after apt-get: ${missing[*]}" >&2
        exit 1
    fi
fi

# Services that packages installed by this run started on their own (Debian starts a
# daemon on install under systemd) are stopped and disabled: the tests start private
# instances on free ports, and the user did not ask for a system etcd, BIRD or
# Prometheus. What was installed before is the user's and left alone; so is dockerd
# (the tests run private ones with their own sockets and directories).
if [ ${#need[@]} -gt 0 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for pair in etcd-server:etcd bird2:bird prometheus:prometheus; do
        pkg=${pair%%:*} svc=${pair#*:}
        case " ${need[*]} " in *" $pkg "*) ;; *) continue ;; esac
        systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
fi
exit 0
