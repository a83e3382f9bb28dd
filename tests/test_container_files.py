"""The image's torch layer is keyed on versions given in the Dockerfile (so that a change of
another dependency does not download torch again); they must be constraints.txt's pins."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dockerfile_torch_versions_are_the_pinned_ones() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    constraints = (ROOT / "constraints.txt").read_text()
    for package, arg in (("torch", "TORCH_VERSION"), ("torchvision", "TORCHVISION_VERSION")):
        pinned = re.search(rf"^{package}==(\S+)$", constraints, re.M)
        given = re.search(rf"^ARG {arg}=(\S+)$", dockerfile, re.M)
        assert pinned and given, package
        assert given.group(1) == pinned.group(1), f"Dockerfile {arg} != constraints.txt {package}"
