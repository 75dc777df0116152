"""``changed`` is sent for every change to a team, a membership, a role or a quota.

The jobs app records it in its audit log (``dashboard.jobs.models.AuditEvent``, the one audit
log): teams sits below jobs and cannot write there itself.
"""

from django.dispatch import Signal

changed = Signal()  # kwargs: actor (a user or None), action ("team.create", ...), detail (a dict)
