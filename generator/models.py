from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.db.models import F, QuerySet
from django.urls import reverse
from django.utils import timezone


class BatchQuerySet(QuerySet["Batch"]):
    """Batches by the status groups that Batch defines."""

    def active(self) -> BatchQuerySet:
        return self.filter(status__in=Batch.ACTIVE_STATUSES)

    def resumable(self) -> BatchQuerySet:
        """Failed or cancelled before reaching their total."""
        return self.filter(status__in=Batch.RESUMABLE_STATUSES, created_count__lt=F("total"))

    def deletable(self) -> BatchQuerySet:
        """Whose users may be deleted: ended, or being deleted already (so that a deletion
        whose job was lost can be asked for again)."""
        return self.filter(status__in={*Batch.ENDED_STATUSES, Batch.Status.DELETING})

    def deleting(self) -> BatchQuerySet:
        return self.filter(status=Batch.Status.DELETING)


class Batch(models.Model):
    """One request for N generated accounts: the truth about its progress lives here."""

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting for a worker"
        RUNNING = "running", "Creating users"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        # Undo: the batch's users are being deleted, then are gone. The counts stay as history.
        DELETING = "deleting", "Deleting users"
        DELETED = "deleted", "Users deleted"

    # The groups of statuses the rules speak of, each spelled out here only.
    # Generating: a run may be working on the batch, which can be cancelled.
    ACTIVE_STATUSES: ClassVar[frozenset[str]] = frozenset({Status.PENDING, Status.RUNNING})
    # Stopped short: resumable while users are missing.
    RESUMABLE_STATUSES: ClassVar[frozenset[str]] = frozenset({Status.FAILED, Status.CANCELLED})
    # Generation over and the users still there: they can be deleted.
    ENDED_STATUSES: ClassVar[frozenset[str]] = frozenset({Status.FINISHED, *RESUMABLE_STATUSES})
    # Nothing works on the batch any more: its page stops polling.
    DONE_STATUSES: ClassVar[frozenset[str]] = frozenset({*ENDED_STATUSES, Status.DELETED})

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="requested_batches",
    )
    total = models.PositiveIntegerField()
    created_count = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status, default=Status.PENDING)
    realistic_names = models.BooleanField(default=False)
    # With a seed, the same request on a fresh database makes the same accounts.
    seed = models.PositiveBigIntegerField(null=True, blank=True)
    deleted_count = models.PositiveIntegerField(default=0)
    deleted_at = models.DateTimeField(null=True, blank=True)
    # The hash of the one password shared by the batch's accounts, or "" for unusable
    # passwords. Kept here, never in the job, so no password reaches Redis.
    password_hash = models.CharField(max_length=256, blank=True, editable=False)
    failure_reason = models.TextField(blank=True)
    # Sent with the form, so a double submit finds the batch it already made.
    idempotency_key = models.UUIDField(null=True, blank=True, editable=False)
    # Every run of the batch is an RQ job; runs may overlap, so the reconciler only needs
    # to know the latest one to tell whether the batch is still waiting in the queue.
    jobs_enqueued = models.PositiveIntegerField(default=0)
    last_job_id = models.CharField(max_length=64, blank=True)
    last_enqueued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # How long the batch sat failed or cancelled between its start and a resume: not time spent
    # on it, so its elapsed time, rate and time left leave it out.
    paused_for = models.DurationField(default=timedelta(0))

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"
        # The django-rq dashboard empties queues and deletes jobs: the staff flag is not enough.
        permissions = [("use_rq_dashboard", "Can use the RQ dashboard")]
        indexes = [models.Index(fields=["status"])]
        constraints = [
            models.UniqueConstraint(
                fields=["requested_by", "idempotency_key"], name="unique_batch_per_request"
            )
        ]

    def __str__(self) -> str:
        return f"Batch #{self.pk}: {self.total} users ({self.get_status_display().lower()})"

    def get_absolute_url(self) -> str:
        return reverse("generator:batch_detail", args=[self.pk])

    @property
    def is_done(self) -> bool:
        """Nothing is working on the batch any more: its page stops polling."""
        return self.status in self.DONE_STATUSES

    @property
    def is_generating(self) -> bool:
        return self.status in self.ACTIVE_STATUSES

    @property
    def can_resume(self) -> bool:
        return self.status in self.RESUMABLE_STATUSES and self.created_count < self.total

    @property
    def can_cancel(self) -> bool:
        return self.is_generating

    @property
    def can_delete_users(self) -> bool:
        return self.status in self.ENDED_STATUSES

    @property
    def percent(self) -> int:
        if not self.total:
            return 0
        return min(100, self.created_count * 100 // self.total)

    @property
    def deleted_percent(self) -> int:
        if self.status == self.Status.DELETED:
            return 100
        if not self.created_count:
            return 0
        return min(100, self.deleted_count * 100 // self.created_count)

    @property
    def elapsed(self) -> timedelta | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return max(end - self.started_at - self.paused_for, timedelta(0))

    @property
    def rate(self) -> float | None:
        """Users created per second so far."""
        elapsed = self.elapsed
        if elapsed is None or not self.created_count:
            return None
        return self.created_count / max(elapsed.total_seconds(), 0.001)

    @property
    def eta(self) -> timedelta | None:
        rate = self.rate
        if rate is None or not self.is_generating:
            return None
        return timedelta(seconds=(self.total - self.created_count) / rate)


# Who holds a chunk's lease, as (lease_worker, lease_job): an RQ worker's name and the id of
# the job it runs ("" outside RQ, where only the lease's expiry tells).
LeaseHolder = tuple[str, str]


class BatchChunk(models.Model):
    """A slice of a batch that one run claims, fills and commits in one transaction."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    size = models.PositiveIntegerField()
    done = models.BooleanField(default=False)
    # A run holds a chunk while it fills it. Its lease is void once it runs out, or as soon as
    # the RQ worker it names is dead or on another job (a killed worker, a killed work horse).
    lease_owner = models.CharField(max_length=64, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    lease_worker = models.CharField(max_length=200, blank=True)
    lease_job = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["batch", "index"]
        constraints = [
            models.UniqueConstraint(fields=["batch", "index"], name="unique_chunk_per_batch")
        ]
        indexes = [models.Index(fields=["batch", "done"])]

    def __str__(self) -> str:
        return f"Batch #{self.batch_id} chunk {self.index} ({self.size} users)"


class User(AbstractUser):
    """Django's user, plus the batch that generated it (none for people)."""

    batch = models.ForeignKey(
        Batch, null=True, blank=True, on_delete=models.SET_NULL, related_name="users"
    )

    class Meta(AbstractUser.Meta):
        swappable = "AUTH_USER_MODEL"
