"""Shared pytest fixtures."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DIR = PROJECT_ROOT.parent / "shared" / "reference"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The public-release fixtures, read in place (never copied into the repository)."""
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference fixtures not found at {REFERENCE_DIR} (expected ../shared/reference beside the repo)")
    return REFERENCE_DIR


@pytest.fixture
def ros_domain_id(monkeypatch) -> int:
    """A ROS_DOMAIN_ID of its own for a test that starts ROS processes, so parallel runs do not cross-talk."""
    domain = random.Random(os.getpid() * 7919 + random.randrange(1 << 30)).randrange(1, 101)
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    return domain
