from django.contrib import admin, messages
from django.utils import timezone

from .install import install_line
from .models import Accelerator, AgentToken, Machine


class AcceleratorInline(admin.TabularInline):
    model = Accelerator
    extra = 0
    can_delete = False
    readonly_fields = ("index", "vendor", "name", "uuid", "mem_total_bytes", "power_limit_watts", "mig_profile")
    fields = readonly_fields


class AgentTokenInline(admin.TabularInline):
    model = AgentToken
    extra = 0
    can_delete = False
    fields = ("prefix", "label", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at")


@admin.register(Machine)
class MachineAdmin(admin.ModelAdmin):
    list_display = ("name", "hostname", "policy", "last_seen_at", "agent_version", "spool_dropped")
    search_fields = ("name", "hostname")
    fields = (
        "name",
        "policy",
        "hostname",
        "os",
        "cpu_model",
        "cpu_cores",
        "cpu_threads",
        "mem_total_bytes",
        "last_seen_at",
    )
    readonly_fields = ("hostname", "os", "cpu_model", "cpu_cores", "cpu_threads", "mem_total_bytes", "last_seen_at")
    inlines = [AcceleratorInline, AgentTokenInline]
    actions = ["issue_token"]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            self._show_token(request, obj)

    def _show_token(self, request, machine: Machine) -> None:
        token = machine.issue_token(label=f"admin:{request.user}")
        server = request.build_absolute_uri("/").rstrip("/")
        messages.warning(
            request,
            f"Agent token for {machine.name}, shown once (copy it now): {token} — to install and start its agent, "
            f"run this on {machine.name} as root: {install_line(server, token)}",
        )

    @admin.action(description="Issue a new agent token")
    def issue_token(self, request, queryset):
        for machine in queryset:
            self._show_token(request, machine)


@admin.register(AgentToken)
class AgentTokenAdmin(admin.ModelAdmin):
    list_display = ("__str__", "machine", "label", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    readonly_fields = ("machine", "prefix", "created_at", "last_used_at", "revoked_at")
    fields = ("machine", "label", "prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def has_add_permission(self, request):
        return False  # tokens are issued from the machine, so the secret can be shown once

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        n = queryset.filter(revoked_at=None).update(revoked_at=timezone.now())
        messages.success(request, f"Revoked {n} token(s); those agents are refused from now on.")
