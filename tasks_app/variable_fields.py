"""A variable's fields, shared by a workspace's variables (tasks_app.models.Variable) and a
variable set's (tasks_app.workflows.models.VariableSetVariable): one way of keeping a
sensitive value (encrypted at rest, never readable back through the API)."""

from __future__ import annotations

from django.db import models

from iacplatform import crypto


class VariableCategory(models.TextChoices):
    TERRAFORM = "terraform"
    ENV = "env"


class VariableFields(models.Model):
    """A variable's key, category and value: a workspace's (Variable) or a variable set's
    (VariableSetVariable), with one way of keeping a sensitive value."""

    key = models.CharField(max_length=200)
    category = models.CharField(max_length=20, choices=VariableCategory.choices, default=VariableCategory.TERRAFORM)
    sensitive = models.BooleanField(default=False)
    # Non-sensitive values are kept readable; sensitive ones only as ciphertext.
    plain_value = models.TextField(blank=True)
    encrypted_value = models.BinaryField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def value(self) -> str:
        if self.sensitive:
            return crypto.decrypt(self.encrypted_value).decode() if self.encrypted_value else ""
        return self.plain_value

    def set_value(self, value: str) -> None:
        if self.sensitive:
            self.encrypted_value = crypto.encrypt(value.encode())
            self.plain_value = ""
        else:
            self.plain_value = value
            self.encrypted_value = None


