#!/usr/bin/env bash
# Installs the system tools lanmesh's tests and demo use, if any are missing:
#   ip (iproute2), nft (nftables), ping (iputils-ping), conntrack (conntrack),
#   tcpdump (the adversary tests capture and replay real packets), python3 (locks a database),
#   DDNet-Server and quakestat (ddnet-server, qstat: a real game found by a LAN broadcast).
# Idempotent: does nothing when they are all there. Installs with apt-get only when
# running as root on a system that has it; otherwise prints what to install.
#   bash scripts/deps.sh           install what is missing (when root), else explain
#   bash scripts/deps.sh --check   only tell: exit 1 when something is missing
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"

missing=()
export PATH="$PATH:/usr/games"
for tool in ip nft ping conntrack tcpdump python3 DDNet-Server quakestat; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

packages="iproute2 nftables iputils-ping conntrack tcpdump python3 ddnet-server qstat"
echo "deps: missing tools: ${missing[*]}"
if [ "${1:-}" = "--check" ]; then
    exit 1
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    echo "deps: installing $packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $packages
else
    echo "deps: please install them, e.g. on Debian/Ubuntu:"
    echo "        sudo apt-get install -y --no-install-recommends $packages"
fi
