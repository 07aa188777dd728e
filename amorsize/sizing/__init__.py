"""Sizing a run: whether parallelism pays, with how many workers and how big a chunk.

::

    sample.py     the dry run: per-item seconds, pickled sizes, peak memory
    measure.py    what processes cost on this machine (start-up, IPC), usable cores
    cache.py      those costs, cached per host and start method (costs.json, 0600)
    optimizer.py  decide() (pure: numbers in, plan out) and optimize() (measure, then decide)
    chunks.py     ChunkSizer: keeps chunks near their target duration while a run goes

The public entry points are ``amorsize.optimize`` and ``amorsize.OptimizationResult``.
This package imports nothing itself, so the engine can load one part of it alone.
"""
