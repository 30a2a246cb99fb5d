#!/usr/bin/env bash
# Create /work/main/.venv-3.X for each Python version given (default: 3.10 3.11 3.12 3.13),
# each with traced-transport installed editable (which pulls opentelemetry-api).
#
#   tests/conformance/setup_venvs.sh [3.10 3.12 ...]
#
# The interpreter for 3.X is, in order: $PYTHON_3_X (e.g. PYTHON_3_10=/opt/py/bin/python3.10),
# python3.X on PATH, the newest /root/.pyenv/versions/3.X.*/bin/python3.X (or $PYENV_ROOT's).
# An existing venv of the right version is reused (pip install -e runs again, quickly).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
versions=("$@")
[ ${#versions[@]} -eq 0 ] && versions=(3.10 3.11 3.12 3.13)
pyenv_root="${PYENV_ROOT:-/root/.pyenv}"

find_python() {
    local v="$1" var="PYTHON_${1//./_}" cand
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    if cand="$(command -v "python$v" 2>/dev/null)" && "$cand" -c 'import sys' 2>/dev/null; then
        echo "$cand"; return
    fi
    cand="$(ls -d "$pyenv_root/versions/$v".* 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$cand" ] && [ -x "$cand/bin/python$v" ]; then echo "$cand/bin/python$v"; return; fi
    return 1
}

for v in "${versions[@]}"; do
    py="$(find_python "$v")" || { echo "setup_venvs: no Python $v found" >&2; exit 1; }
    venv="$ROOT/.venv-$v"
    if [ -x "$venv/bin/python" ] && [ "$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$v" ]; then
        echo "== $venv exists ($("$venv/bin/python" -V))"
    else
        echo "== creating $venv with $py"
        rm -rf "$venv"
        "$py" -m venv "$venv"
    fi
    # Keep the venv out of git status without touching the project's .gitignore.
    [ -f "$venv/.gitignore" ] || echo '*' > "$venv/.gitignore"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT"
    "$venv/bin/python" -c 'import sys, traced_transport, test.test_asyncio; print("   ok", sys.version.split()[0], traced_transport.__file__)'
done
