#!/usr/bin/env bash
# Installs what kohakuriver's tests and main job need on a fresh Debian 12
# machine (as root): OpenSSH client and server, debootstrap for the offline
# VPS image, and the other SSH clients the tests drive. Idempotent and quick
# when everything is there.
set -euo pipefail

packages=(openssh-server openssh-client debootstrap rsync git putty-tools dropbear-bin python3-paramiko xauth)
missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [ "$(id -u)" != 0 ]; then
		echo "setup: missing packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
		exit 1
	fi
	echo "setup: installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# sshd's privilege separation directory (tests run sshd directly).
mkdir -p /run/sshd 2>/dev/null || true

# The VPS image: built offline, cached by a hash of its inputs.
if [ -x "$(command -v docker)" ] && docker info >/dev/null 2>&1 && [ -f testdata/vpsimage/build.sh ]; then
	bash testdata/vpsimage/build.sh
fi
