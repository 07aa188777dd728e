"""The start-up cost cache: measure once per host, start method and Python, then reuse.

::

    get_startup_costs(method)      costs.json in the user cache dir, one entry per
      ├─ hit  → StartupCosts        (host, start method, python version)
      └─ miss or corrupt → measure_startup_costs(method), written back atomically (0600)

A corrupt cache warns and is measured again, never an error; a cache that cannot
be written warns, and the costs are measured again on the next call.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

from amorsize._fs import write_atomically
from amorsize.errors import OptimizerWarning
from amorsize.sizing.measure import StartupCosts, fallback_costs, measure_startup_costs

#: Version of the costs.json layout; a file with another version is re-measured.
CACHE_FORMAT = 1
CACHE_FILE = "costs.json"


def cache_path() -> Path:
    """Return the costs cache file: ``$AMORSIZE_CACHE_DIR``, else the XDG cache dir."""
    directory = os.environ.get("AMORSIZE_CACHE_DIR")
    if not directory:
        xdg = os.environ.get("XDG_CACHE_HOME", "")
        # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        directory = str(base / "amorsize")
    return Path(directory) / CACHE_FILE


def cache_key(start_method: str) -> str:
    """Key of one cache entry; the host is included because home dirs get shared."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    return f"{platform.node()}/{start_method}/py{version}"


def _entry_to_costs(entry: Any, start_method: str) -> StartupCosts:
    """Rebuild :class:`StartupCosts` from a cache entry; ``ValueError`` if it is bad."""
    if not isinstance(entry, dict) or entry.get("start_method") != start_method:
        raise ValueError("entry is not a costs record for this start method")
    numbers: list[Any] = [entry.get(k) for k in ("process_start_seconds", "ipc_round_trip_seconds",
                                                 "seconds_per_byte")]
    for value in numbers:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0:
            raise ValueError(f"bad cost value {value!r}")
    return StartupCosts(start_method, *(float(v) for v in numbers))


def _read_cache(path: Path) -> tuple[dict[str, Any], bool]:
    """Return (entries, corrupt). A missing file is empty, not corrupt."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, False
    except (OSError, UnicodeDecodeError) as exc:
        warnings.warn(f"cannot read amorsize cost cache {path}: {exc}; measuring again",
                      OptimizerWarning, stacklevel=3)
        return {}, True
    try:
        document = json.loads(text)
        if document.get("format") != CACHE_FORMAT or not isinstance(document["entries"], dict):
            raise ValueError("unknown layout")
        return document["entries"], False
    except (ValueError, KeyError, AttributeError, TypeError):
        warnings.warn(f"amorsize cost cache {path} is corrupt; measuring again and rewriting it",
                      OptimizerWarning, stacklevel=3)
        return {}, True


def _write_cache(path: Path, entries: dict[str, Any]) -> None:
    """Write the cache atomically (temp file, fsync, os.replace), readable by the owner only."""
    text = json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=2, sort_keys=True)
    write_atomically(str(path), [text.encode("utf-8")], prefix=".costs-")


#: Costs already read, per (file, key), with the file version they were read from: a
#: run asks at every probe, and reading and parsing the file took ~0.8 ms of it.
_memo: dict[tuple[str, str], tuple[tuple[int, int, int], StartupCosts]] = {}


def _file_version(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of the cache file, None if it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def get_startup_costs(start_method: str, *, refresh: bool = False) -> StartupCosts:
    """Return this machine's costs for ``start_method``, measuring them on a cache miss.

    Args:
        start_method: a name from ``multiprocessing.get_all_start_methods()``.
        refresh: measure again even if the cache holds an entry.

    Returns:
        The cached or freshly measured :class:`StartupCosts`; pessimistic defaults
        (with an :class:`OptimizerWarning`) if measuring fails.
    """
    path, key = cache_path(), cache_key(start_method)
    version = _file_version(path)
    memo = _memo.get((str(path), key))
    if memo is not None and memo[0] == version and not refresh:
        return memo[1]
    entries, corrupt = _read_cache(path)
    if key in entries and not refresh:
        try:
            costs = _entry_to_costs(entries[key], start_method)
            if version is not None:
                _memo[(str(path), key)] = (version, costs)
            return costs
        except ValueError:
            warnings.warn(f"amorsize cost cache {path} holds a bad entry for {key!r}; "
                          "measuring again", OptimizerWarning, stacklevel=2)
    try:
        costs = measure_startup_costs(start_method)
    except Exception as exc:  # any failure to measure must degrade, never break optimize()
        warnings.warn(f"could not measure {start_method!r} start-up costs ({exc}); "
                      "assuming pessimistic defaults", OptimizerWarning, stacklevel=2)
        return fallback_costs(start_method)
    entries = {} if corrupt else dict(entries)
    entries[key] = {**asdict(costs), "measured_at": time.time()}
    try:
        _write_cache(path, entries)
    except OSError as exc:
        warnings.warn(f"cannot write amorsize cost cache {path} ({exc}); set AMORSIZE_CACHE_DIR "
                      "to a writable directory to avoid measuring on every call",
                      OptimizerWarning, stacklevel=2)
    return costs
