"""amorsize-dask: run ``amorsize.execute`` / ``imap`` on a Dask distributed cluster.

Registered under the entry-point group ``amorsize.backends`` as ``"dask"``::

    from amorsize import execute
    from amorsize_dask import DaskBackend

    execute(func, items, backend="dask", dlq=dlq)                     # a local cluster for the run
    execute(func, items, backend=DaskBackend(address="tcp://10.0.0.5:8786"), dlq=dlq)

Dask is imported only when a run starts, never by amorsize itself.
"""

from __future__ import annotations

from amorsize_dask._cluster import start_local_cluster
from amorsize_dask.backend import DaskBackend, DaskPool
from amorsize_dask.errors import DaskBackendError, DaskConnectError

__version__ = "0.1.0"

__all__ = [
    "DaskBackend", "DaskBackendError", "DaskConnectError", "DaskPool", "__version__", "start_local_cluster",
]
