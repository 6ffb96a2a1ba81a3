from django.db import models


class IdempotencyRecord(models.Model):
    """
    One ``Idempotency-Key`` an API client sent to one endpoint, and the answer it got.

    Inserted, and committed, before the view runs: a concurrent request with
    the same key finds it ``in_progress`` and waits. Once the view answered,
    the response is stored (``done``) and replayed to every retry. A server
    error deletes the record, so that a retry runs again. Kept for
    ``IDEMPOTENCY_KEY_HOURS`` from ``created_at``; older records are purged.
    """

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        DONE = "done", "Done"

    scope = models.CharField(max_length=300, help_text='The endpoint: "POST /api/reservations/".')
    key = models.CharField(max_length=255, help_text="The client's Idempotency-Key.")
    fingerprint = models.CharField(
        max_length=64, help_text="sha256 (hex) of the method, path and canonical JSON body."
    )
    status = models.CharField(max_length=11, choices=Status, default=Status.IN_PROGRESS)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.BinaryField(default=b"")
    response_headers = models.JSONField(default=dict, help_text="Content-Type, Retry-After...")
    created_at = models.DateTimeField(help_text="When the key was first used; it lives from then.")
    started_at = models.DateTimeField(
        help_text="When the request now answering it began: a run older than "
        "IDEMPOTENCY_STALE_SECONDS is taken to have crashed."
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["scope", "key"], name="idempotency_scope_key_unique"),
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_at")]

    def __str__(self) -> str:
        return f"{self.scope} {self.key} ({self.status})"
