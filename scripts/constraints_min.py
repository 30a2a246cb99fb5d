"""Print pip constraints pinning every dependency the package declares to its lower bound.

``make test-deps-min`` installs the package with these, so the lowest versions pyproject.toml promises
are the ones the tests run on: a lower bound that no longer works fails there, not for a user.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# Extras whose requirements are pinned exactly already, or only render and plot the dashboards.
SKIP_EXTRAS = {"dashboards", "preview"}
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def lower_bounds(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra, reqs in project.get("optional-dependencies", {}).items():
        if extra not in SKIP_EXTRAS:
            requirements += reqs
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise SystemExit(f"cannot parse requirement {requirement!r}")
        name, spec, marker = match.groups()
        if name.lower().replace("_", "-") == project["name"]:
            continue
        bound = re.search(r">=\s*([^,\s]+)", spec)
        if bound is None:
            continue
        pins[name.lower()] = bound.group(1) + (f" {marker}" if marker else "")
    return pins


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    for name, version in sorted(lower_bounds(root / "pyproject.toml").items()):
        print(f"{name}=={version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
