from django.contrib import admin

from .models import Alert, AlertRule, WebhookDelivery


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "threshold", "machine", "enabled", "webhook_url", "created_by")
    list_filter = ("kind", "enabled")


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    """Incidents are opened and closed by the evaluation only."""

    list_display = ("fired_at", "rule", "message", "resolved_at", "last_notified")
    list_filter = ("rule", "resolved_at")
    readonly_fields = [f.name for f in Alert._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "alert", "event", "attempts", "delivered_at", "gave_up_at", "last_error")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request):
        return False
