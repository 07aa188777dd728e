"""DLQFormat and DLQPolicy: defaults, validation messages, no side effects, pickling."""

from __future__ import annotations

import os
import pathlib
import pickle

import pytest

import amorsize
from amorsize import AmorsizeError, DLQFormat, DLQPolicy, InvalidArgumentError


def test_public_names_are_importable_from_the_package():
    for name in ("DLQFormat", "DLQPolicy", "DLQEntry", "DeadLetterQueue", "replay_failed_items",
                 "DLQCorruptError", "PickleNotAllowedError", "InvalidArgumentError"):
        assert name in amorsize.__all__
        assert getattr(amorsize, name) is not None


def test_formats():
    assert {f.name for f in DLQFormat} == {"JSON", "PICKLE"}
    assert DLQFormat("json") is DLQFormat.JSON
    assert DLQFormat("pickle") is DLQFormat.PICKLE


def test_defaults():
    policy = DLQPolicy()
    assert policy.directory == ".amorsize_dlq"
    assert policy.format is DLQFormat.JSON
    assert policy.max_entries == 10000
    assert policy.include_traceback is True
    assert policy.auto_persist is True
    assert policy.fsync == "batch"
    assert policy.allow_pickle is False  # None resolves to True only for PICKLE
    assert policy.strict is True


def test_allow_pickle_defaults_to_true_only_for_the_pickle_format():
    assert DLQPolicy(format=DLQFormat.PICKLE).allow_pickle is True
    assert DLQPolicy(format="pickle").allow_pickle is True
    assert DLQPolicy(format=DLQFormat.JSON).allow_pickle is False
    assert DLQPolicy(format=DLQFormat.PICKLE, allow_pickle=False).allow_pickle is False
    assert DLQPolicy(format=DLQFormat.JSON, allow_pickle=True).allow_pickle is True


def test_accepted_values():
    DLQPolicy(directory=pathlib.Path("x"), max_entries=0, fsync="always")
    DLQPolicy(fsync="never", include_traceback=False, auto_persist=False, strict=False)
    assert DLQPolicy(format="json").format is DLQFormat.JSON
    assert DLQPolicy(directory=pathlib.Path("a/b")).path == os.path.join("a", "b")


@pytest.mark.parametrize(
    ("field", "value", "accepted"),
    [
        ("directory", "", "non-empty path"),
        ("directory", 42, "non-empty path"),
        ("format", "yaml", "DLQFormat.JSON or DLQFormat.PICKLE"),
        ("format", "JSON", "DLQFormat.JSON or DLQFormat.PICKLE"),
        ("max_entries", -1, "an int >= 0"),
        ("max_entries", 1.5, "an int >= 0"),
        ("max_entries", True, "an int >= 0"),
        ("max_entries", "10", "an int >= 0"),
        ("include_traceback", "yes", "True or False"),
        ("auto_persist", 1, "True or False"),
        ("strict", None, "True or False"),
        ("fsync", "sometimes", "one of 'always', 'batch', 'never'"),
        ("fsync", True, "one of 'always', 'batch', 'never'"),
        ("allow_pickle", "yes", "True, False or None"),
    ],
)
def test_invalid_values_name_the_field_the_value_and_what_is_accepted(field, value, accepted):
    with pytest.raises(InvalidArgumentError) as info:
        DLQPolicy(**{field: value})
    error = info.value
    assert isinstance(error, ValueError)
    assert isinstance(error, AmorsizeError)
    message = str(error)
    assert f"{field}={value!r}" in message
    assert accepted in message


def test_constructing_a_policy_touches_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    DLQPolicy()
    DLQPolicy(directory=tmp_path / "a" / "b", format=DLQFormat.PICKLE)
    assert list(tmp_path.iterdir()) == []


def test_policies_are_frozen_compare_by_value_and_pickle():
    policy = DLQPolicy(directory="d", format=DLQFormat.PICKLE, max_entries=5, fsync="never")
    assert policy == DLQPolicy(directory="d", format="pickle", max_entries=5, fsync="never")
    with pytest.raises(AttributeError):
        policy.max_entries = 3  # type: ignore[misc]
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(policy, protocol)) == policy
    assert pickle.loads(pickle.dumps(DLQFormat.JSON)) is DLQFormat.JSON
