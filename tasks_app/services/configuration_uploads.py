"""Configuration versions announced before their archive arrives (the TFE API's flow: create,
PUT the archive to the signed upload URL, poll until uploaded). The archive goes through the
same checks as every other upload (services/configs.py); a refused one leaves no
configuration and says why on the announcement."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from iacplatform.errors import Conflict, PlatformError
from tasks_app.models import ConfigurationUpload, Workspace
from tasks_app.services.audit import audit_record
from tasks_app.services.configs import configuration_create_from_archive, configuration_upload_allowed


def configuration_upload_create(*, workspace: Workspace, actor: Any, speculative: bool,
                                auto_queue_runs: bool = False) -> ConfigurationUpload:
    configuration_upload_allowed(workspace, speculative=speculative)
    return ConfigurationUpload.objects.create(
        workspace=workspace, speculative=speculative, auto_queue_runs=auto_queue_runs,
        created_by=actor if getattr(actor, "is_authenticated", False) else None,
    )


def configuration_upload_receive(*, upload_id: int, data: bytes) -> ConfigurationUpload:
    """Store the archive of an announced configuration (once). Raises the archive checks'
    Invalid after recording its words on the announcement (its `error`)."""
    with transaction.atomic():
        upload = ConfigurationUpload.objects.select_for_update(of=("self",)).select_related("workspace", "created_by").get(
            id=upload_id)
        if upload.configuration_version_id is not None:
            raise Conflict("this configuration version has its files already: create a new one")
        try:
            with transaction.atomic():
                cv = configuration_create_from_archive(workspace=upload.workspace, data=data,
                                                       actor=upload.created_by, speculative=upload.speculative)
        except PlatformError as exc:
            # Raised after the commit: the refusal's words stay on the announcement for the
            # client that polls it.
            refused = exc
            upload.error = str(exc)
            upload.save(update_fields=["error"])
        else:
            upload.configuration_version = cv
            upload.error = ""
            upload.save(update_fields=["configuration_version", "error"])
            if upload.created_by is not None:
                audit_record(actor=upload.created_by, action="configuration.upload", obj=upload.workspace,
                             data={"configuration_version": cv.id, "sha256": cv.sha256, "via": "tfe-api"})
            return upload
    raise refused
