"""The batch model: its status groups, the rules read from them, and its progress figures."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from generator.models import Batch

pytestmark = pytest.mark.django_db

Status = Batch.Status
# What a person may do with a batch in each status (its users all made, or some missing).
RULES = {
    # status: (is_generating, can_cancel, is_done, can_delete_users, can_resume when short)
    Status.PENDING: (True, True, False, False, False),
    Status.RUNNING: (True, True, False, False, False),
    Status.FINISHED: (False, False, True, True, False),
    Status.FAILED: (False, False, True, True, True),
    Status.CANCELLED: (False, False, True, True, True),
    Status.DELETING: (False, False, False, False, False),
    Status.DELETED: (False, False, True, False, False),
}


def batch_in(status: str, *, total: int = 100, created: int = 40) -> Batch:
    return Batch.objects.create(total=total, created_count=created, status=status)


def test_every_status_has_its_rules_spelled_out():
    assert set(RULES) == set(Status)


@pytest.mark.parametrize("status", list(Status))
def test_each_status_allows_what_its_group_allows(status):
    batch = batch_in(status)
    assert (
        batch.is_generating,
        batch.can_cancel,
        batch.is_done,
        batch.can_delete_users,
        batch.can_resume,
    ) == RULES[status]


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED])
def test_a_stopped_batch_with_every_user_made_cannot_be_resumed(status):
    assert not batch_in(status, total=50, created=50).can_resume


def test_the_groups_nest_as_the_rules_say():
    assert Batch.RESUMABLE_STATUSES < Batch.ENDED_STATUSES < Batch.DONE_STATUSES
    assert not Batch.ACTIVE_STATUSES & Batch.DONE_STATUSES
    assert Status.DELETING not in Batch.ACTIVE_STATUSES | Batch.DONE_STATUSES


def test_the_querysets_select_the_batches_the_properties_describe():
    batches = [batch_in(status) for status in Status]
    batches.append(batch_in(Status.FAILED, total=50, created=50))  # stopped, nothing missing

    def pks(queryset) -> set[int]:
        return set(queryset.values_list("pk", flat=True))

    assert pks(Batch.objects.active()) == {b.pk for b in batches if b.is_generating}
    assert pks(Batch.objects.resumable()) == {b.pk for b in batches if b.can_resume}
    assert pks(Batch.objects.deletable()) == {
        b.pk for b in batches if b.can_delete_users or b.status == Status.DELETING
    }
    assert pks(Batch.objects.deleting()) == {b.pk for b in batches if b.status == Status.DELETING}


def test_percent_is_the_share_made_and_never_passes_100():
    assert batch_in(Status.RUNNING, total=200, created=50).percent == 25
    assert batch_in(Status.FINISHED, total=10, created=12).percent == 100
    assert batch_in(Status.PENDING, total=0, created=0).percent == 0


def test_deleted_percent_is_the_share_deleted_and_100_once_deleted():
    deleting = batch_in(Status.DELETING, total=100, created=80)
    deleting.deleted_count = 20
    assert deleting.deleted_percent == 25
    assert batch_in(Status.DELETED, total=100, created=0).deleted_percent == 100
    assert batch_in(Status.DELETING, total=100, created=0).deleted_percent == 0


def test_a_batch_not_started_has_no_elapsed_time_rate_or_eta():
    batch = batch_in(Status.PENDING)
    assert (batch.elapsed, batch.rate, batch.eta) == (None, None, None)


def test_rate_and_eta_follow_the_users_made_since_the_start():
    started = timezone.now() - timedelta(seconds=10)
    batch = Batch.objects.create(
        total=300, created_count=100, status=Status.RUNNING, started_at=started
    )
    assert batch.rate == pytest.approx(10, rel=0.05)
    assert batch.eta.total_seconds() == pytest.approx(20, rel=0.05)


def test_an_ended_batch_has_a_fixed_duration_and_no_eta():
    started = timezone.now() - timedelta(seconds=30)
    batch = Batch.objects.create(
        total=300,
        created_count=100,
        status=Status.CANCELLED,
        started_at=started,
        finished_at=started + timedelta(seconds=5),
    )
    assert batch.elapsed == timedelta(seconds=5)
    assert batch.rate == pytest.approx(20)
    assert batch.eta is None
