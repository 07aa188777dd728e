"""Fixtures for the fault suite (helpers in fault_support.py, worker functions in fault_probes.py)."""

from __future__ import annotations

import uuid
from typing import Iterator

import pytest
from fault_support import GONE_WITHIN, TAG_VAR, ProcessTag


@pytest.fixture
def process_tag(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProcessTag]:
    """Tag every process this test starts; at the end none may be left (checked within 3 s)."""
    tagged = ProcessTag.start(uuid.uuid4().hex)
    monkeypatch.setenv(TAG_VAR, tagged.tag)
    yield tagged
    try:
        tagged.assert_gone(GONE_WITHIN, "processes started by this test")
    finally:
        tagged.kill_all()
