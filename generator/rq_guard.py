"""What RQ may do with what it reads from Redis: decode JSON only, run the app's own jobs only.

Anyone who can write to Redis can put a job there. RQ imports and calls whatever function, and
whatever success, failure or stopped callback, a job names by dotted path; it sends the HTTP
requests a job's webhooks describe; and it unpickles whatever a caller reads without naming a
serializer (django-rq 4.2 forgets to in several views, rq in the registries and worker lookups
those views build). install() closes all of it once per process, in rq's Job class and its
serializer fallback, because that is where every one of those paths looks: a Job subclass or a
worker option would miss the registries and views that rq and django-rq build with the defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import rq.serializers
from rq.job import Job

logger = logging.getLogger(__name__)

REFUSAL = "refused: generator runs only its own jobs"
CALLBACK_KINDS = ("success", "failure", "stopped")

# rq's own members, which the guarded ones call once a job has passed.
# A property at run time; its stub says a method.
_rq_func: property = Job.func  # type: ignore[assignment]
_rq_send_webhooks = Job.send_webhooks
_allowed: frozenset[str] = frozenset()


class JobRefused(Exception):
    """A job read from Redis asks for something the app never enqueues."""


def function_name(function: Callable[..., Any]) -> str:
    """The dotted path RQ stores for a function (rq.utils.resolve_function_reference)."""
    return f"{function.__module__}.{function.__qualname__}"


def allowed_names() -> frozenset[str]:
    return _allowed


def refusal(job: Job) -> str | None:
    """Why the app will not run this job, or None when it is one of the app's own."""
    name = job.func_name
    if job.instance is not None or name not in _allowed:
        return f"{REFUSAL}, not {name}"
    callbacks = [
        f"on_{kind}={callback}"
        for kind in CALLBACK_KINDS
        if (callback := getattr(job, f"_{kind}_callback_name"))
    ]
    if callbacks:
        return f"{REFUSAL}, which take no callbacks, not {', '.join(callbacks)}"
    if job.webhooks:
        urls = ", ".join(webhook.url for webhook in job.webhooks)
        return f"{REFUSAL}, which send no webhooks, not {urls}"
    return None


def _guarded_func(job: Job) -> Callable[..., Any] | None:
    reason = refusal(job)
    if reason:
        logger.error("job %s %s", job.id, reason)
        raise JobRefused(reason)
    return _rq_func.__get__(job)


def _refused_callback(kind: str) -> property:
    attribute = f"_{kind}_callback_name"

    def callback(job: Job) -> None:
        # Never imported, wherever rq would run it: in the worker, and in any process that counts
        # a started-job registry (the dashboard's pages run abandoned jobs' failure callbacks).
        if name := getattr(job, attribute):
            logger.error("job %s: %s, not its %s callback %s", job.id, REFUSAL, kind, name)
        return None

    return property(callback)


def _guarded_send_webhooks(job: Job, status: Any, *, exc_string: str | None = None) -> None:
    if job.webhooks:
        logger.error("job %s: %s, which send no webhooks: none sent", job.id, REFUSAL)
        return
    _rq_send_webhooks(job, status, exc_string=exc_string)


def install(job_functions: Iterable[Callable[..., Any]]) -> None:
    """Let RQ run only `job_functions`, no callbacks nor webhooks, and read JSON by default."""
    global _allowed
    _allowed = frozenset(function_name(function) for function in job_functions)
    Job.func = property(_guarded_func)  # type: ignore[method-assign, assignment]
    for kind in CALLBACK_KINDS:
        setattr(Job, f"{kind}_callback", _refused_callback(kind))
    Job.send_webhooks = _guarded_send_webhooks  # type: ignore[method-assign, assignment]
    # No pickle in this process, whoever asks: rq falls back to DefaultSerializer wherever a
    # caller names none (django-rq's views, rq's registries, `rqworker` and `rqworker-pool`
    # without --serializer), and "pickle" is an alias any command line may pass.
    json = rq.serializers.JSONSerializer
    rq.serializers.DefaultSerializer.dumps = staticmethod(json.dumps)
    rq.serializers.DefaultSerializer.loads = staticmethod(json.loads)
    rq.serializers.SERIALIZER_ALIASES["pickle"] = json
