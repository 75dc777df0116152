"""What hardware is (a catalogue with sources), what it costs, and what its work is worth.

Money is stored with its currency and never summed across currencies. Empty catalogue cells are
unknown (NULL), not zero.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from dashboard.fleet.models import Machine

currency_code = RegexValidator(r"^[A-Z]{3}$", "Use a three-letter ISO 4217 code such as USD or EUR.")


def _valid_regex(value: str) -> None:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValidationError(f"not a regular expression: {exc}") from None


class HardwareSpec(models.Model):
    """Published facts about one accelerator model. Rows users add or edit win over shipped rows."""

    name = models.CharField(max_length=120)
    match_pattern = models.CharField(
        max_length=255,
        validators=[_valid_regex],
        help_text="A case-insensitive regular expression matched against the accelerator name the agent reports, "
        "e.g. 'H100.*(SXM|HBM3\\b)' for 'NVIDIA H100 80GB HBM3'.",
    )
    memory_gb = models.FloatField(null=True, blank=True, help_text="GB (10^9 bytes); unknown if empty")
    bandwidth_gb_s = models.FloatField(null=True, blank=True, help_text="memory bandwidth, GB/s (10^9 bytes/s)")
    bf16_tflops = models.FloatField(null=True, blank=True, help_text="dense FP16/BF16 tensor TFLOPS (no sparsity)")
    tdp_watts = models.FloatField(null=True, blank=True, help_text="rated board power, W")
    launch_price_usd = models.FloatField(null=True, blank=True, help_text="list price at launch, USD")
    source_url = models.TextField(blank=True, help_text="where the figures come from (several URLs separated by ' ; ')")
    notes = models.TextField(blank=True)
    shipped = models.BooleanField(default=False, help_text="loaded from the project's catalogue; edit to make it yours")

    class Meta:
        ordering = ["shipped", "name"]

    def __str__(self) -> str:
        return self.name


class CostProfile(models.Model):
    """What one machine costs, or what each machine of one assembly costs."""

    name = models.CharField(max_length=120)
    machine = models.OneToOneField(
        Machine,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="cost_profile",
        help_text="this machine only; leave empty and fill 'assembly' to share the profile",
    )
    assembly = models.CharField(
        max_length=255,
        blank=True,
        help_text="every machine of this assembly, e.g. '4 × H100 80GB HBM3 · 256 GiB' (as the RoI page names it)",
    )
    currency = models.CharField(max_length=3, default="USD", validators=[currency_code])
    purchase_price = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        validators=[MinValueValidator(0)],
        help_text="per machine, in the profile's currency",
    )
    amortisation_months = models.PositiveIntegerField(default=36, validators=[MinValueValidator(1)])
    in_service_on = models.DateField(
        null=True, blank=True, help_text="amortisation starts here; empty: the day the machine was enrolled"
    )
    electricity_price_per_kwh = models.DecimalField(max_digits=10, decimal_places=4, validators=[MinValueValidator(0)])
    pue = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(1.0)],
        help_text="facility power usage effectiveness: facility energy / IT energy (1.0-2.0)",
    )
    host_power_watts = models.FloatField(
        default=0,
        validators=[MinValueValidator(0)],
        help_text="constant draw of the rest of the host (CPU, fans, disks), W; the agent measures accelerators only",
    )
    fixed_monthly = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        default=0,
        validators=[MinValueValidator(0)],
        help_text="rack space, network, support..., per month",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=(models.Q(machine__isnull=False) & models.Q(assembly=""))
                | (models.Q(machine__isnull=True) & ~models.Q(assembly="")),
                name="costprofile_machine_xor_assembly",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if (self.machine_id is None) == (not self.assembly):
            raise ValidationError("Choose either a machine or an assembly, not both and not neither.")


class ValueRates(models.Model):
    """What work is worth: one global row (no machine) and optional rows per machine that override it."""

    machine = models.OneToOneField(
        Machine,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="value_rates",
        help_text="empty: the global rates",
    )
    currency = models.CharField(max_length=3, default="USD", validators=[currency_code])
    serve_per_million_generated = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="price per million generated tokens served (what an API would charge)",
    )
    train_per_million_tokens = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="price per million training tokens; when set it is used instead of the GPU-hour price",
    )
    train_per_gpu_hour = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="rental equivalent per GPU-hour of training",
    )

    class Meta:
        verbose_name_plural = "value rates"
        constraints = [
            models.UniqueConstraint(
                fields=["machine"], condition=models.Q(machine__isnull=True), name="valuerates_one_global"
            )
        ]

    def __str__(self) -> str:
        return f"value rates for {self.machine}" if self.machine_id else "global value rates"
