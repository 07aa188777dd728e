"""The dead letter queue: entries, policy, journal, in-process and shared queues, replay."""

from amorsize.dlq.entry import REASONS, DLQEntry
from amorsize.dlq.policy import DLQFormat, DLQPolicy
from amorsize.dlq.queue import DeadLetterQueue
from amorsize.dlq.replay import replay_failed_items

__all__ = ["REASONS", "DLQEntry", "DLQFormat", "DLQPolicy", "DeadLetterQueue", "replay_failed_items"]
