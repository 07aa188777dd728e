"""The run loop of execute()/imap(), in parts with one job each.

``options`` (the validated options), ``plan`` (backend, width, dry run),
``chunker`` (input, look-ahead, chunk sizes, skip ranges), ``gate`` (circuit
breaker), ``failures`` (DLQ / callable / raise, crash budget), ``resume``
(checkpoint glue), ``progress``, and ``dispatch`` (the one loop over backend
events). See the diagram in :mod:`amorsize.executor`.
"""
