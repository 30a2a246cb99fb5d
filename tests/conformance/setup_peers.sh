#!/usr/bin/env bash
# Create .venv-peers: traced-transport (editable) plus the peer projects whose own test
# suites tests/conformance/peers.py runs, built from source at pinned versions, with
# their test dependencies.
#
#   tests/conformance/setup_peers.sh
#
# aiohttp: the PyPI sdist (it ships its tests); test dependencies pinned by the
# sdist's own requirements/constraints.txt.
# websockets: the PyPI sdist prunes tests/, so the upstream source archive of the same
# release comes from Debian's source package (python-websockets, its .orig.tar.gz),
# fetched with apt-get and a private apt state directory (the system's apt sources
# are left alone).
# An existing venv with the same pins is reused.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${PEERS_VENV:-$ROOT/.venv-peers}"
PY="${PEERS_PYTHON:-python3}"
AIOHTTP_VERSION=3.14.5
WEBSOCKETS_VERSION=15.0.1
PINS="aiohttp=$AIOHTTP_VERSION websockets=$WEBSOCKETS_VERSION v4"
SRC="$VENV/src"

if [ -f "$VENV/.pins" ] && [ "$(cat "$VENV/.pins")" = "$PINS" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$ROOT"
    echo "== $VENV ready ($PINS)"
    exit 0
fi

rm -rf "$VENV"
"$PY" -m venv "$VENV"
echo '*' > "$VENV/.gitignore"
mkdir -p "$SRC"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "== aiohttp $AIOHTTP_VERSION sdist"
"${pip[@]}" download --quiet --no-binary :all: --no-deps "aiohttp==$AIOHTTP_VERSION" -d "$SRC"
tar xzf "$SRC/aiohttp-$AIOHTTP_VERSION.tar.gz" -C "$SRC"

echo "== websockets $WEBSOCKETS_VERSION source archive (Debian source package)"
apt_dir="$(mktemp -d)"
trap 'rm -rf "$apt_dir"' EXIT
mkdir -p "$apt_dir/etc" "$apt_dir/lists/partial" "$apt_dir/cache"
cat > "$apt_dir/etc/src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: trixie sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt_dir/etc"
          -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
          -o "APT::Sandbox::User=root")
apt-get "${apt_opts[@]}" -qq update
# Only the upstream archive is needed: a missing Debian patch file is not an error here.
(cd "$SRC" && apt-get "${apt_opts[@]}" -qq source --download-only "python-websockets=$WEBSOCKETS_VERSION-1" >/dev/null 2>&1 || true)
orig="$SRC/python-websockets_$WEBSOCKETS_VERSION.orig.tar.gz"
[ -f "$orig" ] || { echo "setup_peers: could not fetch $orig" >&2; exit 1; }
tar xzf "$orig" -C "$SRC"
[ -d "$SRC/websockets-$WEBSOCKETS_VERSION/tests/asyncio" ] || { echo "setup_peers: no tests/asyncio in $orig" >&2; exit 1; }

echo "== installing (aiohttp and websockets built from source)"
constraints="$SRC/aiohttp-$AIOHTTP_VERSION/requirements/constraints.txt"
# Constraints files may not carry extras or hashes; keep name==version lines only.
grep -E '^[A-Za-z0-9_.-]+==' "$constraints" | grep -viE '^(aiohttp|websockets|uvloop)==' > "$SRC/constraints.txt"
"${pip[@]}" install --quiet --upgrade pip setuptools wheel
"${pip[@]}" install --quiet -c "$SRC/constraints.txt" \
    "$SRC/aiohttp-$AIOHTTP_VERSION" "$SRC/websockets-$WEBSOCKETS_VERSION" \
    pytest pytest-mock pytest-timeout freezegun "proxy.py" trustme uvloop blockbuster isal zlib_ng gunicorn pkgconfig coverage werkzeug python-socks
"${pip[@]}" install --quiet --no-deps -e "$ROOT"
"${pip[@]}" install --quiet "opentelemetry-api>=1.27"
echo "$PINS" > "$VENV/.pins"
echo "== $VENV ready ($PINS)"
