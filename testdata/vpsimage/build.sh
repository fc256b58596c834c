#!/usr/bin/env bash
# Build the kohakuriver VPS image offline: a minimal Debian bookworm with
# OpenSSH's sshd as the main process, made with debootstrap from the Debian
# mirror this machine's apt already uses, then `docker import`ed. Nothing is
# pulled from a container registry.
#
#   sudo bash testdata/vpsimage/build.sh
#
# Produces kohakuriver/vps:<hash> and tags it kohakuriver/vps:latest. <hash>
# covers every build input (this script, packages.txt, the files under
# rootfs/), so an unchanged checkout only re-tags and exits.
#
# Environment:
#   KOHAKURIVER_VPS_IMAGE    repository name (default kohakuriver/vps)
#   KOHAKURIVER_VPS_SUITE    Debian suite (default bookworm)
#   KOHAKURIVER_VPS_MIRROR   Debian mirror URL (default: read from apt sources)
#   KOHAKURIVER_VPS_REBUILD  set to 1 to build even if the hashed tag exists
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="${KOHAKURIVER_VPS_IMAGE:-kohakuriver/vps}"
suite="${KOHAKURIVER_VPS_SUITE:-bookworm}"
started=$SECONDS

say() { printf '==> %s\n' "$*"; }
die() {
	printf 'build.sh: %s\n' "$*" >&2
	exit 1
}

# --- preconditions ----------------------------------------------------------

[[ $(id -u) -eq 0 ]] || die "must run as root (debootstrap creates device nodes and chowns files): sudo bash $0"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
command -v docker >/dev/null || die "docker CLI not found: apt-get install -y docker.io (or docker-ce-cli)"
docker info >/dev/null 2>&1 || die "docker engine not reachable (docker info failed): is dockerd running? systemctl start docker"

# --- content hash of the build inputs ----------------------------------------

# Inputs: this script, the package list and every file under rootfs/ (path,
# whether it is executable, content). README.md is documentation only.
input_hash() {
	{
		printf 'suite %s\n' "$suite"
		sha256sum <"$here/build.sh"
		sha256sum <"$here/packages.txt"
		(cd "$here/rootfs" && find . -type f -print | LC_ALL=C sort) | while IFS= read -r f; do
			x=-
			[[ -x "$here/rootfs/$f" ]] && x=x
			printf '%s %s %s\n' "$f" "$x" "$(sha256sum <"$here/rootfs/$f")"
		done
	} | sha256sum | cut -c1-12
}

hash="$(input_hash)"
tag="$repo:$hash"

if [[ "${KOHAKURIVER_VPS_REBUILD:-0}" != 1 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
	docker tag "$tag" "$repo:latest"
	say "$tag is up to date; tagged $repo:latest"
	exit 0
fi

# --- the package list and the mirror ----------------------------------------

packages="$(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here/packages.txt" | grep -v '^$' | paste -sd, -)"
[[ -n "$packages" ]] || die "packages.txt lists no packages"

# find_mirror prints the first enabled "deb" source for $suite (not its
# -updates/-security siblings) from apt's configuration, in both the
# deb822 (*.sources) and the one-line (*.list) formats.
find_mirror() {
	local f
	for f in /etc/apt/sources.list.d/*.sources; do
		[[ -f "$f" ]] || continue
		awk -v suite="$suite" '
			function flush() {
				if (enabled != "no" && types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && uri != "")
					{ print uri; found = 1; exit }
				types = ""; suites = ""; uri = ""; enabled = ""
			}
			/^[[:space:]]*#/ { next }
			/^[[:space:]]*$/ { flush(); next }
			tolower($1) == "types:"   { $1 = ""; types = $0 }
			tolower($1) == "suites:"  { $1 = ""; suites = $0 }
			tolower($1) == "uris:"    { uri = $2 }
			tolower($1) == "enabled:" { enabled = tolower($2) }
			END { if (!found) flush() }
		' "$f"
	done
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
		[[ -f "$f" ]] || continue
		# deb [options] URI SUITE COMPONENT...
		sed -e 's/#.*//' -e 's/\[[^]]*\]//' "$f" | awk -v suite="$suite" '$1 == "deb" && $3 == suite { print $2 }'
	done
}

mirror="${KOHAKURIVER_VPS_MIRROR:-}"
if [[ -z "$mirror" ]]; then
	mirror="$(find_mirror | head -n1)"
fi
if [[ -z "$mirror" ]]; then
	mirror="http://deb.debian.org/debian"
	say "no '$suite' source in /etc/apt; falling back to $mirror (set KOHAKURIVER_VPS_MIRROR to override)"
fi

# apt may reach the mirror through a proxy; debootstrap only honours the
# environment variable.
if [[ -z "${http_proxy:-}" ]]; then
	proxy="$(apt-config dump Acquire::http::Proxy 2>/dev/null | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p' | head -n1)"
	if [[ -n "$proxy" && "$proxy" != DIRECT ]]; then
		export http_proxy="$proxy"
		say "using apt's http proxy $proxy"
	fi
fi

# --- build ------------------------------------------------------------------

work="$(mktemp -d "${TMPDIR:-/var/tmp}/kohakuriver-vps.XXXXXX")"
rootfs="$work/rootfs"

cleanup() {
	local m
	# debootstrap mounts /proc and /sys inside the target and may leave them
	# mounted when it fails: unmount first so rm never walks into them.
	if [[ -d "$rootfs" ]]; then
		awk -v r="$rootfs" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r | while IFS= read -r m; do
			umount -l "$m" || true
		done
	fi
	rm -rf --one-file-system "$work"
}
trap cleanup EXIT

say "building $tag ($suite from $mirror)"
say "packages: $packages"
say "debootstrap into $rootfs (takes a minute or two)"
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
	tail -n 30 "$work/debootstrap.log" >&2
	[[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
	die "debootstrap failed (log above)"
fi
say "debootstrap done after $((SECONDS - started)) s"

say "configuring the image"
# openssh-server's postinst generated host keys: every container made from
# this image would share them. Each VPS gets its own at creation.
rm -f "$rootfs"/etc/ssh/ssh_host_*
# sshd's PAM stack writes /proc/self/loginuid, which needs CAP_AUDIT_CONTROL;
# containers do not get it, and a "required" pam_loginuid fails every login.
sed -i -E 's/^(session[[:space:]]+)required([[:space:]]+pam_loginuid\.so)/\1optional\2/' "$rootfs/etc/pam.d/sshd"
install -d -m 0755 -o 0 -g 0 "$rootfs/run/sshd"
# Build-host leftovers: Docker provides these per container.
rm -f "$rootfs/etc/resolv.conf" "$rootfs/etc/hostname"
: >"$rootfs/etc/machine-id"
# Caches and logs of the build.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
	"$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
mkdir -p "$rootfs/var/lib/apt/lists/partial"
# Translations, man and info pages, and docs other than the licences: about
# 55 MB that nothing in a VPS reads (man-db is not installed), as in Docker's
# debian:slim images. apt installs made later inside a VPS keep theirs.
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete

# Our files, root-owned: 0755 if executable in the checkout, else 0644.
(cd "$here/rootfs" && find . -type f -print | LC_ALL=C sort) | while IFS= read -r f; do
	mode=0644
	[[ -x "$here/rootfs/$f" ]] && mode=0755
	install -D -m "$mode" -o 0 -g 0 "$here/rootfs/$f" "$rootfs/$f"
done
grep -q '^Include /etc/ssh/sshd_config.d/\*\.conf' "$rootfs/etc/ssh/sshd_config" ||
	die "the image's sshd_config does not include sshd_config.d: kohakuriver.conf would be ignored"
# Check the configuration with a throwaway host key (the image has none).
chroot "$rootfs" /bin/sh -c 'ssh-keygen -q -t ed25519 -N "" -f /tmp/k && /usr/sbin/sshd -t -h /tmp/k; rc=$?; rm -f /tmp/k /tmp/k.pub; exit $rc' ||
	die "sshd -t rejects the image's configuration"

say "importing into docker as $tag"
tar -C "$rootfs" --numeric-owner --xattrs -c . | docker import \
	--message "kohakuriver VPS image ($suite, inputs $hash)" \
	--change 'CMD ["/usr/local/sbin/kohakuriver-vps-init"]' \
	--change 'EXPOSE 22' \
	--change 'ENV LANG=C.UTF-8' \
	--change 'LABEL io.kohakuriver.image=vps' \
	--change "LABEL io.kohakuriver.image.inputs=$hash" \
	- "$tag" >/dev/null
docker tag "$tag" "$repo:latest"

size="$(docker image inspect --format '{{.Size}}' "$tag")"
say "built $tag (tagged $repo:latest): $((size / 1000000)) MB, $((SECONDS - started)) s"
