"""Every property test starts processes or files: none may leave a process behind."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_leaked_children(no_leaked_children: None) -> None:
    """Apply the suite's leak check (tests/conftest.py) to every property test."""
