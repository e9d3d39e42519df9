"""The runner: an execution request (files + language + limits) → compile once → run
once or once per test → a result with verdicts. Language-aware; the engine below it
knows nothing of languages."""

from execbox.runner.plan import InvalidRequest, Plan, UnknownLanguage
from execbox.runner.runner import EventCallback, Runner, RunnerEvent

__all__ = ["EventCallback", "InvalidRequest", "Plan", "Runner", "RunnerEvent", "UnknownLanguage"]
