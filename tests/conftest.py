"""Shared test plumbing: the official tiny checkpoints (turbo + base) and a counter of property-based cases."""

import shutil
from collections import Counter
from pathlib import Path

import pytest

from acestep_core.pipeline import load_pipeline

FIX = Path(__file__).parent / "fixtures"

CASES: Counter = Counter()


def pytest_terminal_summary(terminalreporter):
    if CASES:
        terminalreporter.section("property-based cases tried")
        for name, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {n} cases")


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """The official checkpoints/ folder with both the turbo and the base model."""
    root = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    shutil.copytree(FIX / "official_tiny_turbo" / "checkpoints", root)
    shutil.copytree(FIX / "official_tiny_samplers" / "checkpoints" / "acestep-v15-base", root / "acestep-v15-base")
    return root


@pytest.fixture(scope="session")
def turbo(checkpoints):
    return load_pipeline(checkpoints, variant="turbo")


@pytest.fixture(scope="session")
def base(checkpoints):
    return load_pipeline(checkpoints, variant="base")
