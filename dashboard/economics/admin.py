from django.contrib import admin

from .models import CostProfile, HardwareSpec, ValueRates


@admin.register(HardwareSpec)
class HardwareSpecAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "match_pattern",
        "memory_gb",
        "bandwidth_gb_s",
        "bf16_tflops",
        "tdp_watts",
        "launch_price_usd",
        "shipped",
    )
    list_filter = ("shipped",)
    search_fields = ("name", "match_pattern", "notes")

    def save_model(self, request, obj, form, change):
        # A corrected shipped row becomes the user's, so it wins over shipped rows from now on.
        if change and form.changed_data:
            obj.shipped = False
        super().save_model(request, obj, form, change)


@admin.register(CostProfile)
class CostProfileAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "machine",
        "assembly",
        "currency",
        "purchase_price",
        "amortisation_months",
        "electricity_price_per_kwh",
        "pue",
        "fixed_monthly",
    )
    search_fields = ("name", "assembly", "machine__name")


@admin.register(ValueRates)
class ValueRatesAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "currency",
        "serve_per_million_generated",
        "train_per_million_tokens",
        "train_per_gpu_hour",
    )
