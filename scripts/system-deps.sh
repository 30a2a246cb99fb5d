#!/usr/bin/env bash
# Debian packages the tests need (prometheus gives prometheus and promtool; nghttp2-client gives nghttp;
# chromium and tmux for the live view's browser and terminal tests).
# Installs only what is missing; needs root (CI and the dev machines are root).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v nghttp >/dev/null 2>&1 || need+=(nghttp2-client)
# The live-connections page (Playwright drives Debian's chromium) and `traced-transport top` (tmux).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
# unique
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "installing Debian packages: ${need[*]}"
if [ "$(id -u)" != 0 ]; then
    echo "not root: install ${need[*]} yourself (apt-get install ${need[*]})" >&2
    [ "${CI:-}" = "true" ] && exit 1
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
