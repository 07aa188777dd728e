"""Find exceptions that only the cyclic collector would free (a reference cycle per failure)."""

from __future__ import annotations

import gc
from typing import Callable, List, Type


def cyclic_garbage_of(kind: Type[BaseException], run: Callable[[], object]) -> List[BaseException]:
    """The ``kind`` exceptions that ``run()`` left in reference cycles.

    With the collector off, whatever refcounting does not free during ``run()`` is still
    there at the next collection; DEBUG_SAVEALL keeps it in ``gc.garbage`` to look at.
    Only objects of ``kind`` count, so other threads' garbage cannot fail a test.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [o for o in gc.garbage if isinstance(o, kind)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
