"""requirements.lock: resolves pyproject's ranges, and is what this environment runs.

`make lock` re-resolves it with uv against the package index as of a fixed date; CI has no
guarantee of reaching the index, so these offline checks stand in for "make lock leaves it
unchanged": every dependency pyproject asks for is pinned in the lock for the running Python
and satisfies pyproject's range, and the installed versions are the pinned ones.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"


def locked_pins(text: str) -> dict[str, str]:
    """``name -> version`` of the pins whose environment marker holds for this Python."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line[0] in " #-":
            continue
        req = Requirement(line.rstrip(" \\"))
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier  # a lock pins exactly one version
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def project_requirements() -> list[Requirement]:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return [Requirement(r) for r in reqs]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_every_project_dependency_is_pinned_within_its_range():
    pins = locked_pins(LOCK.read_text())
    for req in project_requirements():
        if req.marker is not None and not Marker(str(req.marker)).evaluate():
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run make lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]} outside pyproject's {req}: run make lock"
        )


def test_this_environment_runs_the_locked_versions():
    pins = locked_pins(LOCK.read_text())
    for name in ("torch", "torchvision", "pytorch-lightning", "hydra-core", "wandb", "numpy"):
        assert metadata.version(name).split("+")[0] == pins[name], (
            f"installed {name} {metadata.version(name)} is not the locked {pins[name]}: "
            "reinstall with make clean && make test"
        )


def test_a_marker_selects_one_pin_per_python():
    text = (
        "numpy==2.2.6 ; python_full_version < '3.11' \\\n"
        "numpy==2.4.6 ; python_full_version >= '3.11'\n"
    )
    expected = "2.2.6" if sys.version_info < (3, 11) else "2.4.6"
    assert locked_pins(text) == {"numpy": expected}
