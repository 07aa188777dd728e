"""The worker side of keeping our own Dask clusters quiet (see ``_logs`` for the caller's side).

Imported only when amorsize starts a cluster: it needs ``distributed``.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class QuietWorkerLogs(WorkerPlugin):
    """A Dask worker plugin for the workers of our own clusters: their ``distributed``
    records below ERROR are dropped in the worker process.

    The routing of ``_logs`` lives in the caller's process; each worker of our cluster is another
    one, writing to the same stderr. A task amorsize cancels while it runs (a chunk
    given up on at close or after a crash elsewhere) makes the worker log ``Async
    instruction ... ended with CancelledError`` at WARNING. Registered with
    ``Client.register_plugin`` (so restarted workers get it too); never on a user's
    cluster.
    """

    name = "amorsize-quiet-logs"
    idempotent = True

    def setup(self, worker: Any) -> None:
        for name in [n for n in logging.root.manager.loggerDict
                     if n == "distributed" or n.startswith("distributed.")] + ["distributed"]:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.ERROR:
                logger.setLevel(logging.ERROR)

    def teardown(self, worker: Any) -> None:
        """Nothing to undo: the worker process ends with the cluster."""
