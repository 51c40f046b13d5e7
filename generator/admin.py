from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.options import ActionLocation
from django.contrib.auth.admin import GroupAdmin as DjangoGroupAdmin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html
from django_rq.settings import get_queues_map

from . import conf, queueing, selectors, use_cases
from .models import Batch, User


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "status",
        "total",
        "created_count",
        "deleted_count",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
    ]
    list_filter = ["status", "realistic_names", "created_at"]
    search_fields = ["id", "requested_by__username"]
    list_select_related = ["requested_by"]
    date_hierarchy = "created_at"
    readonly_fields = [
        "requested_by",
        "total",
        "created_count",
        "status",
        "realistic_names",
        "seed",
        "deleted_count",
        "deleted_at",
        "failure_reason",
        "created_at",
        "started_at",
        "finished_at",
        "duration",
        "jobs_enqueued",
        "last_job_id",
        "last_enqueued_at",
        "rq_job",
        "users_link",
    ]
    exclude = ["password_hash"]
    actions = ["cancel_batches", "resume_batches", "delete_batch_users"]

    @admin.action(
        description="Cancel the selected batches (users made so far are kept)",
        permissions=["manage"],
    )
    def cancel_batches(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        cancelled = [
            batch.pk
            for batch in queryset
            if use_cases.batch_cancel(batch_id=batch.pk).status == Batch.Status.CANCELLED
        ]
        self.message_user(request, f"Cancelled {len(cancelled)} batch(es).")

    @admin.action(
        description="Resume the selected failed or cancelled batches",
        permissions=["manage"],
    )
    def resume_batches(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        resumed = [
            batch.pk
            for batch in queryset
            if use_cases.batch_resume(batch_id=batch.pk).status == Batch.Status.PENDING
        ]
        self.message_user(request, f"Resumed {len(resumed)} batch(es).")

    @admin.action(
        description="Delete the users of the selected batches (in the background)",
        permissions=["manage"],
    )
    def delete_batch_users(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        queued, refused = [], []
        for batch in queryset:
            try:
                batch = use_cases.batch_users_delete_submit(batch_id=batch.pk)
            except ValidationError:
                refused.append(batch.pk)
            else:
                if batch.status == Batch.Status.DELETING:
                    queued.append(batch.pk)
        self.message_user(request, f"Deleting the users of {len(queued)} batch(es).")
        if refused:
            listed = ", ".join(f"#{pk}" for pk in refused)
            self.message_user(
                request,
                f"Still creating users, cancel them first: {listed}.",
                level=messages.WARNING,
            )

    def has_manage_permission(self, request: HttpRequest) -> bool:
        # The pages' rule for managing anyone's batch: generate, and change batches. (Django
        # lets an action through on any one of its permissions, so this is one permission.)
        # The admin lets only logged-in staff this far.
        return isinstance(request.user, User) and selectors.can_manage_any(request.user)

    def has_add_permission(self, request: HttpRequest, obj: Batch | None = None) -> bool:
        # Batches are made through the form, API or CLI, which also enqueue their job.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Batch | None = None) -> bool:
        # Deleting a batch row would orphan its users for good (their undo is "Delete the
        # users"): only a batch with no users left may go from the history.
        if obj is not None and obj.status != Batch.Status.DELETED and obj.created_count:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(
        self, request: HttpRequest, action_location: ActionLocation = ActionLocation.CHANGE_LIST
    ) -> dict[str, Any]:
        actions = super().get_actions(request, action_location=action_location)
        # The bulk delete checks no batch's state: it would orphan users just the same.
        actions.pop("delete_selected", None)
        return actions

    @admin.display(description="Duration")
    def duration(self, batch: Batch) -> str:
        elapsed = batch.elapsed
        return "-" if elapsed is None else f"{elapsed.total_seconds():.2f} s"

    @admin.display(description="RQ job")
    def rq_job(self, batch: Batch) -> str:
        job_id = queueing.batch_job_id(batch)
        queue_index = get_queues_map().get(conf.queue_name())
        try:
            url = reverse("admin:django_rq_job_detail", args=[queue_index, job_id])
        except NoReverseMatch:
            return job_id
        return format_html(
            '<a href="{}">{}</a> (kept by RQ for a while after it ends)', url, job_id
        )

    @admin.display(description="Users")
    def users_link(self, batch: Batch) -> str:
        url = reverse("admin:generator_user_changelist") + f"?batch__id__exact={batch.pk}"
        return format_html('<a href="{}">{} users</a>', url, batch.created_count)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    list_display = [*DjangoUserAdmin.list_display, "batch"]  # type: ignore[misc]
    list_filter = [*DjangoUserAdmin.list_filter, "batch"]
    raw_id_fields = ["batch"]
    fieldsets = [
        *(DjangoUserAdmin.fieldsets or ()),
        ("Generated by", {"fields": ["batch"]}),
    ]
    # Only a superuser hands out superuser status, groups and permissions: otherwise anyone
    # who may change users could grant themselves everything.
    privilege_fields = ("is_superuser", "groups", "user_permissions")

    def get_readonly_fields(self, request: HttpRequest, obj: User | None = None) -> list[str]:
        readonly = list(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            readonly += self.privilege_fields
        return readonly

    def has_change_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        return self.may_administer(request, obj) and super().has_change_permission(request, obj)

    def has_delete_permission(self, request: HttpRequest, obj: User | None = None) -> bool:
        return self.may_administer(request, obj) and super().has_delete_permission(request, obj)

    @staticmethod
    def may_administer(request: HttpRequest, obj: User | None) -> bool:
        """A privileged account (staff, a superuser, or one with groups or permissions) is
        changed, given a new password or deleted by superusers only: whoever may change users
        could otherwise take one over and, with it, everything it may do."""
        if obj is None or request.user.is_superuser or obj.pk == request.user.pk:
            return True
        privileged = obj.is_staff or obj.is_superuser
        return not (privileged or obj.groups.exists() or obj.user_permissions.exists())


# Groups carry permissions: only a superuser may make or change one, or else a staff member who
# may change groups could give their own group every permission.
admin.site.unregister(Group)


@admin.register(Group)
class GroupAdmin(DjangoGroupAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_change_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Group | None = None) -> bool:
        return request.user.is_superuser
