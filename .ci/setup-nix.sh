#!/usr/bin/env bash
# Install Nix when `nix` is missing (Debian's nix-bin: single-user, no daemon,
# works as root) and configure it for flakes on a machine without network.
#
# Called by .ci/run before the test suite. Offline settings (no binary cache,
# an empty flake registry) are written unless NAHUAL_NIX_ONLINE=1; without
# them every nix command spends seconds retrying unreachable hosts.
set -euo pipefail

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v nix >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup-nix: nix is missing and apt-get is not available; install Nix by hand (see docs/environments.md)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    sudo_if_needed apt-get update -qq
    sudo_if_needed apt-get install -y -qq nix-bin >/dev/null
fi

conf=/etc/nix/nix.conf
registry=/etc/nix/nahual-empty-registry.json
sudo_if_needed mkdir -p /etc/nix
if ! grep -qs '^# nahual settings' "$conf"; then
    {
        echo "# nahual settings (.ci/setup-nix.sh)"
        echo "experimental-features = nix-command flakes"
        # Debian's nix.conf says `sandbox = false` (single-user Nix cannot sandbox here); keep it so
        # when that line is gone: the test flakes build with /bin/bash, which a sandbox hides.
        grep -qs '^sandbox' "$conf" || echo "sandbox = false"
        if [ "${NAHUAL_NIX_ONLINE:-0}" != 1 ]; then
            echo "substituters ="
            echo "flake-registry = $registry"
        fi
    } | sudo_if_needed tee -a "$conf" >/dev/null
fi
echo '{"flakes": [], "version": 2}' | sudo_if_needed tee "$registry" >/dev/null
echo "setup-nix: $(nix --version)"
