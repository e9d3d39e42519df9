"""The job queue: one interface; the in-process backend here, a Redis one for scale-out."""

from execbox.queue.base import JobQueue, QueueFull
from execbox.queue.local import LocalQueue

__all__ = ["JobQueue", "LocalQueue", "QueueFull"]
