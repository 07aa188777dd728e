"""DLQFormat and DLQPolicy: where and how a dead letter queue persists.

Constructing a policy validates it and touches no files.
"""

from __future__ import annotations

import enum
import os
import re
from dataclasses import dataclass, field

from amorsize._validate import check_bool, check_choice, check_int, check_seconds, invalid_value
from amorsize.errors import AmorsizeError

FSYNC_MODES = ("always", "batch", "never")
PERSIST_ERROR_MODES = ("warn", "raise")

#: Default cap of the archive of pruned entries (``dlq.pruned.jsonl``): 1 GiB.
DEFAULT_MAX_ARCHIVE_BYTES = 1 << 30

#: With ``fsync="batch"`` the journal is fsynced at most this often (and on
#: flush/close), so a power loss can cost at most this window of adds; a process
#: crash costs nothing because every add reaches the kernel before it returns.
FSYNC_BATCH_INTERVAL_SECONDS = 1.0


class DLQFormat(str, enum.Enum):
    """How items are stored in the journal.

    ``JSON`` stores JSON-native items as readable JSON and everything else as
    tagged cloudpickle bytes. ``PICKLE`` stores every item and metadata with
    cloudpickle, so exact types, lambdas and local classes round-trip.
    Error fields are readable JSON in both formats.
    """

    JSON = "json"
    PICKLE = "pickle"


#: The seed library's wording of its checks, appended to ours so that code matching
#: the seed's messages (``"max_entries must be a non-negative integer"``) keeps working.
SEED_PHRASES = {
    "directory": "directory must be a non-empty string",
    "format": "format must be a DLQFormat enum value",
    "max_entries": "max_entries must be a non-negative integer",
    "include_traceback": "include_traceback must be a boolean",
    "auto_persist": "auto_persist must be a boolean",
}
_FIELD = re.compile(r"(\w+)=(.*) is not valid;", re.DOTALL)


def seed_worded(exc: AmorsizeError) -> AmorsizeError:
    """``exc`` with the seed's phrase for its field appended: ``(... : got VALUE)``."""
    match = _FIELD.match(str(exc))
    phrase = SEED_PHRASES.get(match.group(1)) if match else None
    if match and phrase:
        exc.args = (f"{exc} ({phrase}: got {match.group(2)})",)
    return exc


@dataclass(frozen=True)
class DLQPolicy:
    """Configuration of a :class:`~amorsize.DeadLetterQueue`.

    Args:
        directory: where the journal lives (created lazily, mode 0700).
        format: :class:`DLQFormat` (or ``"json"`` / ``"pickle"``).
        max_entries: keep at most this many live entries; 0 means unbounded. The oldest
            are moved (not deleted) to the archive ``dlq.pruned.jsonl`` beside the journal.
        include_traceback: record the traceback text of each failure.
        auto_persist: append each add to the journal as it happens.
        fsync: ``"always"`` (durable against power loss when ``add()`` returns),
            ``"batch"`` (default: every add reaches the kernel before ``add()``
            returns, so a killed process loses nothing; fsync at most once per
            second and on flush/close), or ``"never"`` (leave it to the OS).
        allow_pickle: allow loading cloudpickle payloads from disk. Defaults to
            True only for the ``PICKLE`` format. Only enable it for files you trust.
        strict: raise :class:`~amorsize.DLQCorruptError` on a corrupt record in the
            middle of a journal; with False it is skipped and counted.
        on_persist_error: what an ``add()`` whose entry could not be written does:
            ``"warn"`` (default: one WARNING per streak of failures, ``healthy`` turns
            False, ``get_summary()["unpersisted"]`` counts them) or ``"raise"``
            (:class:`~amorsize.DLQPersistError`; the entry stays in memory). Either
            way ``flush()``/``close()`` raise if entries remain unwritten.
        max_archive_bytes: cap of the archive of pruned entries; 0 means unbounded.
            At the cap pruning stops (entries stay live) and a WARNING says so.
        dedupe: a failure of an item already in the queue updates its entry (attempts
            summed, first/last failure times, last error, recent distinct errors)
            instead of adding another; see :mod:`amorsize.dlq.dedupe`.
        max_age_seconds: drop entries whose first failure is older than this, on
            open and on add (logged as a WARNING with the count); None keeps them.

    Raises:
        InvalidArgumentError: a field has a value that is not accepted.
    """

    directory: str | os.PathLike[str] = ".amorsize_dlq"
    format: DLQFormat = DLQFormat.JSON
    max_entries: int = 10000
    include_traceback: bool = True
    auto_persist: bool = True
    fsync: str = "batch"
    allow_pickle: bool | None = field(default=None)
    strict: bool = True
    on_persist_error: str = "warn"
    max_archive_bytes: int = DEFAULT_MAX_ARCHIVE_BYTES
    dedupe: bool = False
    max_age_seconds: float | None = None

    def __post_init__(self) -> None:
        try:
            self._check_seed_era_fields()
        except AmorsizeError as exc:
            raise seed_worded(exc) from None
        check_choice("fsync", self.fsync, FSYNC_MODES)
        check_choice("on_persist_error", self.on_persist_error, PERSIST_ERROR_MODES)
        check_int("max_archive_bytes", self.max_archive_bytes, 0)
        max_age = check_seconds("max_age_seconds", self.max_age_seconds, positive=True, optional=True)
        object.__setattr__(self, "max_age_seconds", max_age)
        if check_bool("allow_pickle", self.allow_pickle, optional=True) is None:
            object.__setattr__(self, "allow_pickle", self.format is DLQFormat.PICKLE)

    def _check_seed_era_fields(self) -> None:
        """The fields the seed library had; their errors also carry its wording."""
        if not isinstance(self.directory, (str, os.PathLike)) or not os.fspath(self.directory):
            raise invalid_value("directory", self.directory, "a non-empty path (str or PathLike)")
        try:
            fmt = DLQFormat(self.format)
        except ValueError:
            raise invalid_value("format", self.format, "DLQFormat.JSON or DLQFormat.PICKLE") from None
        object.__setattr__(self, "format", fmt)
        check_int("max_entries", self.max_entries, 0)  # 0 means unbounded
        for name in ("include_traceback", "auto_persist", "strict", "dedupe"):
            check_bool(name, getattr(self, name))

    @property
    def path(self) -> str:
        """The directory as a string."""
        return os.fspath(self.directory)
