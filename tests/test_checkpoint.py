"""Checkpoint's own argument checks (its behaviour in a run is in test_breaker_checkpoint_execute)."""

from __future__ import annotations

import math
import pickle
from typing import Any

import pytest

from amorsize import Checkpoint
from amorsize.errors import AmorsizeError, InvalidArgumentError


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"path": 3}, "path"),
        ({"every_items": 0}, "every_items"),
        ({"every_items": True}, "every_items"),
        ({"every_items": 2.0}, "every_items"),
        ({"every_seconds": -1}, "every_seconds"),
        ({"every_seconds": True}, "every_seconds"),
        ({"every_seconds": math.inf}, "every_seconds"),
        ({"every_seconds": math.nan}, "every_seconds"),
        ({"every_seconds": "30"}, "every_seconds"),
    ],
)
def test_invalid_arguments_name_the_field(tmp_path, kwargs: dict[str, Any], field: str) -> None:
    arguments = {"path": str(tmp_path / "run.ckpt"), **kwargs}
    with pytest.raises(InvalidArgumentError) as info:
        Checkpoint(**arguments)
    assert f"{field}=" in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AmorsizeError)


def test_valid_arguments_are_kept(tmp_path) -> None:
    checkpoint = Checkpoint(tmp_path / "run.ckpt", every_items=10, every_seconds=0)
    assert checkpoint.path == str(tmp_path / "run.ckpt")
    assert (checkpoint.every_items, checkpoint.every_seconds) == (10, 0.0)
    assert Checkpoint(str(tmp_path / "x"), every_seconds=None).every_seconds is None


def test_pickles(tmp_path) -> None:
    checkpoint = Checkpoint(tmp_path / "run.ckpt", every_items=5)
    clone = pickle.loads(pickle.dumps(checkpoint))
    assert (clone.path, clone.every_items, clone.every_seconds) == (
        checkpoint.path, checkpoint.every_items, checkpoint.every_seconds)
