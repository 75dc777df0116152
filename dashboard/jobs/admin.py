from django.contrib import admin

from .models import AuditEvent, Job, JobAttempt


class JobAttemptInline(admin.TabularInline):
    model = JobAttempt
    extra = 0
    can_delete = False
    readonly_fields = (
        "number",
        "machine",
        "gpus",
        "placed_at",
        "started_at",
        "ended_at",
        "outcome",
        "exit_code",
        "message",
    )


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "kind", "owner", "status", "machine", "priority", "created_at")
    list_filter = ("status", "kind", "machine")
    search_fields = ("name", "owner__username")
    readonly_fields = [f.name for f in Job._meta.fields]
    inlines = [JobAttemptInline]

    def has_add_permission(self, request):
        return False  # jobs are submitted through the form or the API, which audit them


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log: who submitted and cancelled what. Read-only, admins only."""

    list_display = ("at", "actor", "action", "job", "detail")
    list_filter = ("action",)
    readonly_fields = ("at", "actor", "action", "job", "detail")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
