"""Teams in the admin: every save goes through teams.service, so each change is audited."""

from __future__ import annotations

from django.contrib import admin

from . import service
from .models import Membership, Team, TokenScope


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 1
    fields = ("user", "role", "source")
    readonly_fields = ("source",)


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "share", "gpu_quota", "gpu_hours_quota", "quota_period")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("created_at",)
    inlines = [MembershipInline]

    def save_model(self, request, obj, form, change):
        if not change:
            fields = {f: form.cleaned_data[f] for f in form.changed_data if f not in ("slug", "name")}
            created = service.create_team(request.user, obj.slug, obj.name, **fields)
            obj.pk = created.pk
            return
        service.update_team(
            request.user, Team.objects.get(pk=obj.pk), **{f: form.cleaned_data[f] for f in form.changed_data}
        )

    def save_formset(self, request, form, formset, change):
        instances = formset.save(commit=False)
        for membership in formset.deleted_objects:
            service.remove_member(request.user, membership)
        for membership in instances:
            service.set_role(request.user, form.instance, membership.user, membership.role, membership.source)

    def delete_model(self, request, obj):
        service.delete_team(request.user, obj)


@admin.register(TokenScope)
class TokenScopeAdmin(admin.ModelAdmin):
    list_display = ("token", "team")
