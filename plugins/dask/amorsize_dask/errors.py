"""Errors of the Dask backend (each an ``AmorsizeError`` and the builtin it replaces)."""

from __future__ import annotations

from amorsize import AmorsizeError


class DaskBackendError(AmorsizeError, RuntimeError):
    """The Dask cluster itself failed: scheduler unreachable, or no worker left."""


class DaskConnectError(DaskBackendError, ConnectionError):
    """The Dask scheduler given by address could not be reached within the connect timeout."""
