import re

import pytest
from django.urls import reverse

from generator.models import Batch, User

pytestmark = pytest.mark.django_db(transaction=True)


def test_form_post_runs_through_a_real_worker(generator_client, queue, run_worker):
    response = generator_client.post(reverse("generator:generate"), {"total": "60"})
    batch = Batch.objects.get()
    assert response.status_code == 302
    assert response["Location"] == batch.get_absolute_url()
    assert queue.fetch_job(batch.job_id).args == [batch.pk]

    run_worker()

    batch.refresh_from_db()
    assert batch.status == Batch.Status.FINISHED
    users = User.objects.filter(batch=batch)
    assert users.count() == 60
    assert all(re.fullmatch(r"user_[A-Za-z]{10}", u.username) for u in users)
