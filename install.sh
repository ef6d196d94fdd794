#!/usr/bin/env bash
# Installs p2p-lab and everything it needs into ./.venv on a fresh Debian/Ubuntu machine.
#   ./install.sh          the lab
#   ./install.sh --test   the lab and its test tools (Ray included)
#   ./install.sh --cluster  the lab and Ray, for lab run --cluster
# As root it also installs the system tools the lab drives (iproute2, iptables) and the
# library the userspace impairment backend's NetfilterQueue binding builds against.
set -euo pipefail
cd "$(dirname "$0")"

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
[ "${1:-}" = "--cluster" ] && extras="[cluster]"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing=()
    command -v ip >/dev/null 2>&1 || missing+=(iproute2)
    command -v iptables >/dev/null 2>&1 || missing+=(iptables)
    command -v git >/dev/null 2>&1 || missing+=(git)
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    dpkg -s libnetfilter-queue-dev >/dev/null 2>&1 || missing+=(libnetfilter-queue-dev)
    if [ "$extras" = "[test]" ]; then  # the report tests open pages in Debian's chromium; the history's export is
        command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # backfilled into a real Prometheus
        command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
        command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "install.sh: apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -qq --upgrade pip
.venv/bin/python -m pip install -qq -e ".${extras}"
echo "install.sh: ready (.venv/bin/lab)"
