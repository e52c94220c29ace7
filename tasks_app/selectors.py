"""Reads."""

from __future__ import annotations

from tasks_app.models import LogChunk


def run_log_read(*, task_id: int, offset: int = 0, job_kind: str | None = None) -> tuple[str, int]:
    """The run's log from byte `offset`; returns (text, next offset). With `job_kind`, only
    the chunks of that kind of job (e.g. the apply's own output)."""
    chunks = LogChunk.objects.filter(task_id=task_id).order_by("offset")
    if job_kind:
        chunks = chunks.filter(job__kind=job_kind)
        return "".join(c.text for c in chunks), 0
    out = bytearray()
    next_offset = offset
    # Start at the chunk that contains `offset`, not at the beginning of the log.
    first = chunks.filter(offset__lte=offset).order_by("-offset").values_list("offset", flat=True).first() or 0
    for chunk in chunks.filter(offset__gte=first):
        data = chunk.text.encode()
        end = chunk.offset + len(data)
        if end <= offset:
            continue
        start = max(0, offset - chunk.offset)
        out += data[start:]
        next_offset = end
    return out.decode(errors="replace"), max(next_offset, offset)
