"""The worker class the Procfile runs."""

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial
from threading import Event, Thread
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.exceptions import StopRequested
from rq.job import Job
from rq.queue import Queue
from rq.serializers import DefaultSerializer
from rq.worker import HerokuWorker, WorkerStatus
from rq.worker.base import SHUTDOWN_SIGNAL

from . import conf, queueing, use_cases

logger = logging.getLogger(__name__)

# An idle worker wakes this often to see whether Redis restarted or a reconcile is due.
IDLE_WAKE_SECONDS = 1
# The longest pause between two tries at an unreachable Redis.
MAX_REDIS_WAIT_SECONDS = 8


class BatchWorker(HerokuWorker):
    """RQ's HerokuWorker (prompt stop on SIGTERM) that looks after batches nothing works on.

    It reconciles when it starts (the previous worker may have died), after each job (its
    work horse may have died), when it finds that Redis restarted (queued jobs are lost), and
    every GENERATOR_RECONCILE_INTERVAL_SECONDS while idle. It beats every
    GENERATOR_WORKER_HEARTBEAT_SECONDS, naming the job it runs, so other workers can judge the
    chunk leases it holds. It runs only the app's own jobs (generator.rq_guard, installed when
    Django starts) and refuses to start with pickle, which runs whatever code a job planted
    in Redis carries. A small batch's first run is made in the worker's own process (see
    execute_job_in_worker), any other job in a forked work horse, as RQ does.
    """

    # RQ's own wait for Redis, while it waits for a job, grows to a minute between tries.
    max_connection_wait_time = MAX_REDIS_WAIT_SECONDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # RQ's monitor loop beats once per interval while a job runs (30 s by default).
        kwargs.setdefault("job_monitoring_interval", conf.worker_heartbeat_seconds())
        if "connection" in kwargs:  # RQ's own start-up asks Redis, and quits if it is down
            self.redis_waiting_for(kwargs["connection"].ping)
        super().__init__(*args, **kwargs)
        if self.serializer is DefaultSerializer:
            # rqworker's default, when the command line names no --serializer.
            raise ImproperlyConfigured(
                "BatchWorker reads JSON only: run it with "
                "--serializer rq.serializers.JSONSerializer"
            )
        self.running_job_id = ""
        self.redis_run_id = ""
        self.reconcile_due_at = 0.0

    def work(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return super().work(*args, **kwargs)
        except RedisError:
            # django-rq's rqworker prints the message alone: say where it came from.
            self.log.exception("worker stopped: Redis unreachable")
            raise

    def bootstrap(self, *args: Any, **kwargs: Any) -> None:
        super().bootstrap(*args, **kwargs)
        self.redis_restarted()  # what Redis is now: a later change means it restarted
        self.reconcile("worker start")

    # RQ's worker quits on a Redis error anywhere outside its wait for a job, leaving a platform
    # to restart it (and honcho to stop every process). This one waits for Redis instead, so
    # the run its work horse makes goes on, and the worker reconciles once Redis is back.

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        try:
            super().heartbeat(timeout, pipeline=pipeline)
            queueing.worker_beat(
                pipeline if pipeline is not None else self.connection,
                worker_name=self.name,
                worker_pid=self.pid or 0,
                job_id=self.running_job_id,
            )
        except RedisError:
            self.log.warning("heartbeat skipped: Redis unreachable")

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        try:
            super().set_state(state, pipeline=pipeline)
        except RedisError:
            self._state = state  # as RQ keeps it; Redis hears of it at the next change

    def maintain_heartbeats(self, job: Job) -> None:
        try:
            super().maintain_heartbeats(job)
        except RedisError:
            self.log.warning("heartbeat skipped: Redis unreachable")

    def set_current_job_working_time(
        self, current_job_working_time: float, pipeline: Pipeline | None = None
    ) -> None:
        try:
            super().set_current_job_working_time(current_job_working_time, pipeline=pipeline)
        except RedisError:
            self.current_job_working_time = current_job_working_time  # RQ's time-limit check

    def _start_scheduler(self, *args: Any, **kwargs: Any) -> None:
        start = super()._start_scheduler
        self.redis_waiting_for(lambda: start(*args, **kwargs))

    def check_for_suspension(self, burst: bool) -> None:
        check = super().check_for_suspension
        self.redis_waiting_for(lambda: check(burst))

    def run_maintenance_tasks(self) -> None:
        self.redis_waiting_for(super().run_maintenance_tasks)

    def redis_waiting_for[T](self, action: Callable[[], T]) -> T:
        """Do `action`, again and again while Redis cannot be reached."""
        wait = 1.0
        while True:
            try:
                return action()
            except RedisError:
                logger.warning("Redis unreachable, trying again in %.0f s", wait)
                time.sleep(wait)
                wait = min(wait * 2, MAX_REDIS_WAIT_SECONDS)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        # Just before the job, in the work horse (or the worker, for a run made there): RQ's
        # bookkeeping in Redis, and meanwhile the job's database connection (both mostly
        # waiting on a server; measured on 2 cores, ~5 ms each, one after the other).
        with database_connected_meanwhile():
            super().prepare_job_execution(job, remove_from_intermediate_queue)

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Set before the fork (if any), so the work horse's beats name the job too.
        self.running_job_id = job.id
        try:
            if self.runs_in_worker(job):
                self.execute_job_in_worker(job, queue)
            else:
                super().execute_job(job, queue)
            # While the beats still name the job: until then its leases stand, and no
            # reconcile takes the batch for abandoned.
            self.stopped_run_settle(job)
        finally:
            self.running_job_id = ""
            self.heartbeat()  # at once: the job's leases are void from now on
        # A work horse that died (the OOM killer) left its batch to be taken over now.
        self.reconcile("job end")

    def runs_in_worker(self, job: Job) -> bool:
        try:
            return queueing.job_runs_in_worker(job)
        except Exception as error:
            stop_requested_reraise(error)
            # Data RQ cannot decode (planted, or pickled): a work horse decodes it again and
            # fails the job, as it does any other's, instead of the worker stopping.
            self.log.warning("job %s: unreadable, left to a work horse", job.id, exc_info=True)
            return False

    def execute_job_in_worker(self, job: Job, queue: Queue) -> None:
        """Run the job in this process, as RQ's SimpleWorker does, without a work horse: a
        small batch's run (GENERATOR_IN_WORKER_MAX_TOTAL). RQ's stop-job command finds no
        horse to kill, and the run, a fraction of a second, goes on."""
        self.log.info("job %s: made in the worker's own process", job.id)
        self.prepare_execution(job)
        with self.beating():
            self.perform_job(job, queue)
        self.set_state(WorkerStatus.IDLE)

    @contextmanager
    def beating(self) -> Iterator[None]:
        """Beat every GENERATOR_WORKER_HEARTBEAT_SECONDS while the block runs, as the worker
        does while it waits for a work horse: the run's leases stand only while it beats."""
        done = Event()

        def beat() -> None:
            while not done.wait(self.job_monitoring_interval):
                try:
                    self.heartbeat()
                except Exception:
                    self.log.exception("heartbeat failed")

        beater = Thread(target=beat, name="heartbeat", daemon=True)
        beater.start()
        try:
            yield
        finally:
            done.set()
            beater.join()

    def kill_horse(self, sig: signal.Signals = SHUTDOWN_SIGNAL) -> None:
        # RQ's signals the group of whatever process id it holds: with none (a job run in the
        # worker) that is this process's own group, where the Procfile's other processes may
        # be. The stop-job command calls this from RQ's pubsub thread: the pid is read once.
        horse_pid = self.horse_pid
        if not horse_pid:
            # Nothing stops: should the run still fail, RQ must record a failure, not a stop.
            self._stopped_job_id = None
            self.log.info("no work horse to kill: the job runs in the worker, and goes on")
            return
        try:
            if os.getpgid(horse_pid) == horse_pid:
                os.killpg(horse_pid, sig)
            else:
                # Just forked, the horse has not made its own group yet: RQ's killpg would
                # signal the worker's (a SIGTERM at that instant killed the worker's launcher).
                os.kill(horse_pid, sig)
        except ProcessLookupError:
            return  # the horse ended meanwhile
        self.log.info("signalled work horse %s (%s)", horse_pid, signal.Signals(sig).name)

    def stopped_run_settle(self, job: Job) -> None:
        """A run a person stopped (the dashboard's Stop) stops its batch, before the reconcile
        that would take the batch for abandoned and queue it again."""
        try:
            batch_id = queueing.batch_of_stopped_run(job)
            if batch_id is not None and use_cases.batch_run_stopped(batch_id=batch_id):
                self.log.warning("batch %s: its job %s was stopped, so is it", batch_id, job.id)
        except Exception as error:
            stop_requested_reraise(error)
            # Whatever else it is (Redis or the database unreachable, a job hash Redis lost),
            # it must not stop the worker; the batch then goes on as if its run had died.
            self.log.exception("job %s: could not tell whether it was stopped", job.id)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        if timeout is None:  # burst mode: one look at the queues, no waiting
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        idle_until = None if max_idle_time is None else time.monotonic() + max_idle_time
        wake = min(timeout, IDLE_WAKE_SECONDS)
        dequeue = partial(super().dequeue_job_and_maintain_ttl, wake, max_idle_time=wake)
        while True:
            result = self.redis_waiting_for(dequeue)
            if result is not None or (idle_until is not None and time.monotonic() >= idle_until):
                return result
            if self.redis_restarted():
                self.reconcile("Redis restarted")
            elif time.monotonic() >= self.reconcile_due_at:
                self.reconcile("idle")

    def redis_restarted(self) -> bool:
        """Whether Redis restarted since this worker last looked (its jobs may be gone); when
        it never could look, say yes: it cannot tell."""
        try:
            run_id = str(self.connection.info("server")["run_id"])
        except RedisError:
            return False
        restarted = run_id != self.redis_run_id
        self.redis_run_id = run_id
        return restarted

    def reconcile(self, occasion: str) -> None:
        self.reconcile_due_at = time.monotonic() + conf.reconcile_interval_seconds()
        try:
            reconciled = use_cases.batches_reconcile()
        except RedisError as error:
            stop_requested_reraise(error)
            self.log.warning("batch reconcile (%s) skipped: Redis unreachable", occasion)
        except DatabaseError as error:
            stop_requested_reraise(error)
            self.log.warning("batch reconcile (%s) skipped: database unreachable", occasion)
        except Exception as error:
            stop_requested_reraise(error)
            # Whatever else it is, it must not stop the worker: the next reconcile tries again.
            self.log.exception("batch reconcile (%s) failed", occasion)
        else:
            if reconciled.enqueued:
                self.log.info("re-enqueued batches %s (%s)", reconciled.enqueued, occasion)
            if reconciled.look_again_in is not None:
                # A batch whose job was not in Redis yet: soon, its enqueue is done or lost.
                self.reconcile_due_at = min(
                    self.reconcile_due_at, time.monotonic() + reconciled.look_again_in
                )
        finally:
            # The work horse is forked: it must not inherit this process's connections.
            connections.close_all()


@contextmanager
def database_connected_meanwhile() -> Iterator[None]:
    """Open the default database connection in a thread while the block runs."""
    database = connections[DEFAULT_DB_ALIAS]
    database.inc_thread_sharing()
    thread = Thread(target=_connect_quietly, args=(database,), name="database-connect", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
        database.dec_thread_sharing()


def _connect_quietly(database: BaseDatabaseWrapper) -> None:
    try:
        database.ensure_connection()
    except Exception:
        # The job's first query connects again, and fails where its run reports the error.
        logger.warning("could not connect to the database ahead of the job", exc_info=True)
        with suppress(Exception):
            database.close()  # not a half-made one (its set-up failed after the connect)


def stop_requested_reraise(error: BaseException) -> None:
    """Raise StopRequested if `error` is one, or was caused by one.

    RQ raises StopRequested from its SIGTERM handler, wherever the worker is at that instant,
    and some of RQ's own code wraps it (a job's data read lazily turns it into a
    DeserializationError): caught as an error, the worker would not stop.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, StopRequested):
            raise StopRequested() from error
        cause = cause.__cause__ or cause.__context__
