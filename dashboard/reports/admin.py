from django.contrib import admin

from .models import ReportDelivery


@admin.register(ReportDelivery)
class ReportDeliveryAdmin(admin.ModelAdmin):
    """Which weekly reports went out, which are retried and which were given up, with the error."""

    list_display = ("kind", "subject", "period_start", "channel", "target", "attempts", "delivered_at", "gave_up_at")
    list_filter = ("kind", "channel", "delivered_at", "gave_up_at")
    readonly_fields = [f.name for f in ReportDelivery._meta.fields]
