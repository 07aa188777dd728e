"""The dead letter queue: entries, policy, journal, and the in-process and shared queues.

Nothing here runs work: replaying a queue is :mod:`amorsize.replay`.
"""

from amorsize.dlq.base import DeadLetterQueueBase
from amorsize.dlq.entry import REASONS, DLQEntry
from amorsize.dlq.policy import DLQFormat, DLQPolicy
from amorsize.dlq.queue import DeadLetterQueue

__all__ = ["REASONS", "DLQEntry", "DLQFormat", "DLQPolicy", "DeadLetterQueue", "DeadLetterQueueBase"]
