"""Counting the SQL statements the platform sends to the benchmark's database.

Why PostgreSQL statement logging, and not something else (checked on this machine):

- pg_stat_statements would be the natural tool, but the embedded PostgreSQL (`pgserver`'s
  build) ships no `pg_stat_statements.so` (its lib/postgresql has only plpgsql, pgoutput,
  vector and the encoding converters), and the extension needs `shared_preload_libraries`,
  i.e. a restart of a server that other work on this machine may be using.
- `pg_stat_database.xact_commit/xact_rollback` counts transactions, not statements (a
  Django atomic block with ten queries is one), and backends flush those counters lazily
  (up to ~10 s late when idle), so a window's count is fuzzy.
- `log_statement = 'all'`, set with ALTER DATABASE for the benchmark's database only, logs
  every statement of every session on it (simple protocol "statement: ...", extended
  protocol "execute <name>: ...") to the server's log, `<var>/pg/log` (pgserver starts
  postgres with `pg_ctl -l` there). Other databases on the same server are untouched, and
  the database is dropped at the next benchmark start. Cost: one log line per statement,
  written by the backend, so it adds a little server CPU to what is measured; switch it off
  with --no-query-log to compare.

The benchmark process's own queries (progress, analysis) are excluded: its connections turn
logging off for themselves (`SET log_statement = 'none'`, see `silence_this_process`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# "LOG:  statement: SELECT ..." (simple protocol; Django's psycopg 3 client-side binding
# cursors) or "LOG:  execute <unnamed>: SELECT ..." (extended protocol). "STATEMENT:" lines
# (the text of a failed statement, after its ERROR) are deliberately not matched.
STATEMENT_RE = re.compile(rb"LOG:  (?:statement|execute [^:]*): (.*)$")
# Errors, e.g. "ERROR:  deadlock detected". The log line names no database (pgserver keeps
# PostgreSQL's default log_line_prefix, '%m [%p] '), but it names the backend's pid, and a
# backend that logged a statement is one of ours (only our database logs statements): an
# error is counted when its pid logged a statement before it (a failing statement is logged
# before it runs). Errors of other databases on the shared server (a test run) are not.
ERROR_RE = re.compile(rb"\b(ERROR|FATAL|PANIC):  (.*)$")
PID_RE = re.compile(rb"\[(\d+)\] [A-Z]+:  ")
TXN_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "START TRANSACTION", "SET ")
_LITERAL = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")
_LIST = re.compile(r"\((?:\s*\?\s*,)+\s*\?\s*\)")
_SPACES = re.compile(r"\s+")
# Column lists say little about what a statement is for; the table and the condition do.
_SELECT_LIST = re.compile(r"^SELECT (?:DISTINCT )?.*? FROM ")
_INSERT_COLS = re.compile(r"^(INSERT INTO \S+) \(.*?\) VALUES .*?( RETURNING .*)?$")
_UPDATE_SET = re.compile(r"^(UPDATE \S+ SET ).*?( WHERE .*)?$")
_QUALIFIED = re.compile(r'"(\w+)"\."(\w+)"')
_APP_PREFIX = re.compile(r"^(?:tasks_app|agents_app|auth|authtoken|django)_")


def shape(sql: str, width: int = 150) -> str:
    """A statement with its literals and column lists blanked, to group statements of one kind."""
    s = _LITERAL.sub("?", sql)
    s = _NUMBER.sub("?", s)
    s = _LIST.sub("(?, ...)", s)
    s = _SPACES.sub(" ", s).strip()
    s = _SELECT_LIST.sub("SELECT … FROM ", s, count=1)
    s = _INSERT_COLS.sub(lambda m: f"{m.group(1)} (…) VALUES (…){m.group(2) or ''}", s, count=1)
    s = _UPDATE_SET.sub(lambda m: f"{m.group(1)}…{m.group(2) or ''}", s, count=1)
    s = _QUALIFIED.sub(lambda m: f"{_APP_PREFIX.sub('', m.group(1))}.{m.group(2)}", s)  # "tasks_app_job"."id" -> job.id
    return s[:width]


@dataclass
class StatementCount:
    total: int = 0
    txn_control: int = 0  # BEGIN/COMMIT/ROLLBACK/SAVEPOINT/RELEASE/SET
    log_bytes: int = 0
    shapes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # of our database's sessions, see ERROR_RE
    other_errors: int = 0  # errors of other sessions on the server

    @property
    def queries(self) -> int:
        """Statements that read or write data (what "queries" means in the report)."""
        return self.total - self.txn_control


class StatementLog:
    def __init__(self, server_url: str, db_name: str, log_path: Path) -> None:
        self.server_url = server_url
        self.db_name = db_name
        self.log_path = log_path
        self.start_offset = 0
        self.end_offset = 0

    def enable(self) -> None:
        """Log every statement of new sessions on the benchmark's database. Call before the
        servers start: the setting applies to sessions opened after it (pooled connections
        live for the whole run)."""
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f"ALTER DATABASE \"{self.db_name}\" SET log_statement = 'all'")
            # Bound parameters (extended protocol) would add a DETAIL line per statement.
            conn.execute(f'ALTER DATABASE "{self.db_name}" SET log_parameter_max_length = 0')

    def _size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def mark_start(self) -> None:
        self.start_offset = self._size()

    def mark_end(self) -> None:
        self.end_offset = self._size()

    def count(self, top: int = 12) -> StatementCount:
        """Statements logged between mark_start() and mark_end(), streamed (the log can be
        tens of MB for a full run)."""
        out = StatementCount(log_bytes=max(0, self.end_offset - self.start_offset))
        if out.log_bytes == 0:
            return out
        remaining = out.log_bytes
        ours: set[bytes] = set()
        with open(self.log_path, "rb") as fh:
            fh.seek(self.start_offset)
            for raw in fh:
                remaining -= len(raw)
                line = raw.rstrip(b"\n")
                pid = PID_RE.search(line)
                m = STATEMENT_RE.search(line)
                if m:
                    if pid:
                        ours.add(pid.group(1))
                    sql = m.group(1).decode(errors="replace").lstrip()
                    out.total += 1
                    if sql.upper().startswith(TXN_CONTROL):
                        out.txn_control += 1
                    else:
                        out.shapes[shape(sql)] += 1
                else:
                    e = ERROR_RE.search(line)
                    if e and (pid is None or pid.group(1) in ours):
                        message = _NUMBER.sub("N", e.group(2).decode(errors="replace"))[:100]
                        out.errors[f"{e.group(1).decode()}: {message}"] += 1
                    elif e:
                        out.other_errors += 1
                if remaining <= 0:
                    break
        # Keep only the most frequent kinds: enough to see where the queries go.
        out.shapes = Counter(dict(out.shapes.most_common(top)))
        return out


def silence_this_process() -> None:
    """Every database connection this (benchmark) process opens stops logging its own
    statements, so only the platform's are counted. Call after django.setup()."""
    from django.db.backends.signals import connection_created

    def quiet(sender: object, connection: object, **kwargs: object) -> None:
        with connection.cursor() as cur:  # type: ignore[attr-defined]
            cur.execute("SET log_statement = 'none'")

    connection_created.connect(quiet, weak=False)
