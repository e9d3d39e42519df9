"""The event bus: one interface (base.py), an in-process and a Redis backend."""

from execbox.bus.base import CancelHandler, EventBus, Lagged, Subscription
from execbox.bus.local import LocalEventBus

__all__ = ["CancelHandler", "EventBus", "Lagged", "LocalEventBus", "Subscription"]
