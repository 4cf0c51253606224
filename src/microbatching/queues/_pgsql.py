"""The SQL of :class:`~microbatching.queues.postgres.PostgresQueue`: its schema and its statements.

Statements use ``$n`` placeholders (asyncpg's, the server's own); :func:`for_psycopg`
rewrites one for psycopg.  Times are the server's (``now()``), never a client's clock, so
leases mean the same on every machine.  Each statement is one round trip, whatever the
number of jobs: arrays of keys, row ids and tokens go in as parameters (``unnest``).
"""

from __future__ import annotations

import hashlib
import re

from ._table import JobTable

__all__ = [
    "DONE_SHARDS",
    "MIGRATIONS",
    "SCHEMA_MARK",
    "Statements",
    "advisory_key",
    "for_psycopg",
    "qualified",
    "quote",
]

#: Acknowledgements add to one of these counter rows, picked at random, so workers
#: acknowledging at once do not queue up behind one row lock.
DONE_SHARDS = 8
#: The comment on a schema the queue created (so ``drop()`` knows it may remove it once empty).
SCHEMA_MARK = "created by microbatching"

# Version 2 of the job-table model (see _table.py) is the first PostgreSQL one.  A later
# version appends its own statements here; a queue applies those it has not yet seen.
_V2 = """
CREATE TABLE {jobs} (
    seq          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key          text        NOT NULL,
    job_id       bytea       NOT NULL,
    payload      bytea       NOT NULL,
    attempts     integer     NOT NULL DEFAULT 0,
    recovered    integer     NOT NULL DEFAULT 0,
    token        text,
    available_at timestamptz NOT NULL DEFAULT now(),
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT {jobs_key} UNIQUE (key)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
        autovacuum_vacuum_cost_delay = 0);
-- The claim reads this index from its low end: ready jobs and expired leases, oldest first.
CREATE INDEX {jobs_ready} ON {jobs} (available_at, seq);
CREATE TABLE {dead} (
    seq          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key          text        NOT NULL,
    job_id       bytea       NOT NULL,
    payload      bytea       NOT NULL,
    attempts     integer     NOT NULL,
    error        text        NOT NULL,
    traceback    text,
    enqueued_at  timestamptz NOT NULL,
    failed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX {dead_key} ON {dead} (key);
CREATE TABLE {meta} (
    name         text        PRIMARY KEY,
    value        text,
    count        bigint      NOT NULL DEFAULT 0
);
INSERT INTO {meta} (name) SELECT 'done.' || shard FROM generate_series(0, {last_shard}) AS shard
"""
MIGRATIONS: list[tuple[int, str]] = [(2, _V2)]

_ENQUEUE = """
WITH new AS (
    INSERT INTO {jobs} (key, job_id, payload, available_at)
    SELECT m.key, m.job_id, m.payload, now() + m.delay * interval '1 second'
    FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::float8[]) WITH ORDINALITY
         AS m(key, job_id, payload, delay, n)
    ORDER BY m.n
    ON CONFLICT (key) DO NOTHING
    RETURNING 1
)
SELECT count(*)::int AS stored, CASE WHEN count(*) > 0 THEN pg_notify($5, '') END AS woke FROM new
"""

# One statement: lock the oldest ready rows (SKIP LOCKED: a row another claim holds is
# passed over, never waited for), move those whose lease expired after their last attempt
# to the dead letters, lease the rest under the new token.  The old attempts, recovered
# count and token are returned, as the job-table model reads them before a claim.
#
# Rows are found again by id (``seq = ANY(array)``), never by a join: a join's plan rests
# on statistics that are wrong whenever the table was last analyzed empty, and a wrong one
# reads the whole table per claim.  A lookup by id cannot be planned any other way.
_CLAIM = """
WITH picked AS (
    SELECT seq, attempts, recovered, token, available_at FROM {jobs}
    WHERE available_at <= now()
    ORDER BY available_at, seq
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), chosen AS (
    SELECT array_agg(seq ORDER BY available_at, seq) AS seqs,
           array_agg(attempts ORDER BY available_at, seq) AS attempts,
           array_agg(recovered ORDER BY available_at, seq) AS recovered,
           array_agg(token ORDER BY available_at, seq) AS tokens
    FROM picked
), exhausted AS (
    DELETE FROM {jobs} AS j
    WHERE j.seq = ANY((SELECT seqs FROM chosen)::bigint[]) AND j.token IS NOT NULL AND j.attempts >= $4
    RETURNING j.key, j.job_id, j.payload, j.attempts, j.enqueued_at
), buried AS (
    INSERT INTO {dead} (key, job_id, payload, attempts, error, enqueued_at)
    SELECT key, job_id, payload, attempts, replace($5, '{{attempts}}', attempts::text), enqueued_at
    FROM exhausted
), leased AS (
    UPDATE {jobs} AS j
    SET token = $2, available_at = now() + $3 * interval '1 second', attempts = j.attempts + 1,
        recovered = j.recovered + (j.token IS NOT NULL)::int
    WHERE j.seq = ANY((SELECT seqs FROM chosen)::bigint[]) AND NOT (j.token IS NOT NULL AND j.attempts >= $4)
    RETURNING j.seq, j.key, j.job_id, j.payload, array_position((SELECT seqs FROM chosen), j.seq) AS n
)
SELECT l.seq, l.key, l.job_id, l.payload, c.attempts[l.n], c.recovered[l.n], c.tokens[l.n]
FROM leased AS l, chosen AS c
ORDER BY l.n
"""

# How long until the next job is ready (a delay or a lease running out), for an idle claim.
_NEXT_DUE = """
SELECT extract(epoch FROM min(available_at) - now())::float8 FROM {jobs}
"""

# Settles match each row on its id AND the token it was claimed under (the token at the
# row's position in the arrays): a late settle from a consumer whose lease ran out (the
# job claimed again since) matches nothing.  Rows are looked up by id, as in the claim.
_MINE = "j.seq = ANY($1::bigint[]) AND j.token = ($2::text[])[array_position($1::bigint[], j.seq)]"
_AT = "[array_position($1::bigint[], j.seq)]"

_ACK = f"""
WITH gone AS (
    DELETE FROM {{jobs}} AS j WHERE {_MINE}
    RETURNING 1
), counted AS (
    UPDATE {{meta}} SET count = count + (SELECT count(*) FROM gone)
    WHERE name = $3 AND EXISTS (SELECT 1 FROM gone)
)
SELECT count(*)::int FROM gone
"""

# A retry or a release makes its jobs ready sooner than any idle worker expects: it notifies.
_RETRY = f"""
WITH moved AS (
    UPDATE {{jobs}} AS j SET token = NULL, available_at = now() + ($3::float8[]){_AT} * interval '1 second'
    WHERE {_MINE}
    RETURNING 1
)
SELECT count(*)::int, CASE WHEN count(*) > 0 THEN pg_notify($4, '') END FROM moved
"""

_RELEASE = f"""
WITH moved AS (
    UPDATE {{jobs}} AS j SET token = NULL, available_at = now(), attempts = greatest(j.attempts - 1, 0)
    WHERE {_MINE}
    RETURNING 1
)
SELECT count(*)::int, CASE WHEN count(*) > 0 THEN pg_notify($3, '') END FROM moved
"""

_EXTEND = f"""
UPDATE {{jobs}} AS j SET available_at = now() + $3 * interval '1 second'
WHERE {_MINE}
"""

_DEAD_LETTER = f"""
WITH gone AS (
    DELETE FROM {{jobs}} AS j WHERE {_MINE}
    RETURNING j.key, j.job_id, j.payload, j.attempts, ($3::text[]){_AT}, ($4::text[]){_AT}, j.enqueued_at
), buried AS (
    INSERT INTO {{dead}} (key, job_id, payload, attempts, error, traceback, enqueued_at)
    SELECT * FROM gone
)
SELECT count(*)::int FROM gone
"""

_STATS = """
SELECT count(*) FILTER (WHERE available_at <= now()),
       count(*) FILTER (WHERE token IS NULL AND available_at > now()),
       count(*) FILTER (WHERE token IS NOT NULL AND available_at > now()),
       (SELECT coalesce(sum(count), 0) FROM {meta} WHERE name LIKE 'done.%'),
       (SELECT count(*) FROM {dead}),
       extract(epoch FROM min(enqueued_at))::float8,
       extract(epoch FROM now())::float8
FROM {jobs}
"""

_DEAD_ROWS = """
SELECT key, job_id, payload, attempts, error, extract(epoch FROM failed_at)::float8, traceback
FROM {dead} ORDER BY seq LIMIT $1
"""

# A dead letter goes back only if no unfinished job holds its key (the newest one, if it
# was dead-lettered more than once); the others stay dead letters, never lost.
_REQUEUE = """
WITH chosen AS (
    SELECT DISTINCT ON (d.key) d.seq, d.key, d.job_id, d.payload FROM {dead} AS d
    WHERE ($1::text[] IS NULL OR d.key = ANY($1))
      AND NOT EXISTS (SELECT 1 FROM {jobs} AS j WHERE j.key = d.key)
    ORDER BY d.key, d.seq DESC
), back AS (
    INSERT INTO {jobs} (key, job_id, payload) SELECT key, job_id, payload FROM chosen ORDER BY seq
    ON CONFLICT (key) DO NOTHING
    RETURNING key
), gone AS (
    DELETE FROM {dead} AS d USING chosen AS c, back AS b WHERE d.seq = c.seq AND c.key = b.key
    RETURNING 1
)
SELECT count(*)::int, CASE WHEN count(*) > 0 THEN pg_notify($2, '') END FROM gone
"""

_PURGE = """
WITH gone AS (DELETE FROM {dead} WHERE $1::text[] IS NULL OR key = ANY($1) RETURNING 1)
SELECT count(*)::int FROM gone
"""

_DROP = "DROP TABLE IF EXISTS {jobs}, {dead}, {meta}"


class Statements:
    """Every statement of one queue, its table names filled in (schema-qualified and quoted)."""

    def __init__(self, schema: str, table: JobTable) -> None:
        self.schema = schema
        self.table = table
        names = {
            "jobs": qualified(schema, table.jobs),
            "dead": qualified(schema, table.dead),
            "meta": qualified(schema, table.meta),
            "jobs_key": quote(f"{table.jobs}_key"),
            "jobs_ready": quote(f"{table.jobs}_ready"),
            "dead_key": quote(f"{table.dead}_key"),
            "last_shard": str(DONE_SHARDS - 1),
        }
        self.jobs, self.dead, self.meta = names["jobs"], names["dead"], names["meta"]
        self.enqueue = _ENQUEUE.format(**names).strip()
        self.claim = _CLAIM.format(**names).strip()
        self.next_due = _NEXT_DUE.format(**names).strip()
        self.ack = _ACK.format(**names).strip()
        self.retry = _RETRY.format(**names).strip()
        self.release = _RELEASE.format(**names).strip()
        self.extend = _EXTEND.format(**names).strip()
        self.dead_letter = _DEAD_LETTER.format(**names).strip()
        self.stats = _STATS.format(**names).strip()
        self.dead_rows = _DEAD_ROWS.format(**names).strip()
        self.requeue = _REQUEUE.format(**names).strip()
        self.purge = _PURGE.format(**names).strip()
        self.drop = _DROP.format(**names).strip()
        #: (version, its statements), oldest first.
        self.migrations = [(version, _split(sql.format(**names))) for version, sql in MIGRATIONS]


def qualified(schema: str, name: str) -> str:
    """``"schema"."name"``."""
    return f"{quote(schema)}.{quote(name)}"


def quote(identifier: str) -> str:
    """An identifier, double-quoted."""
    # Names are checked (lower-case letters, digits, _), so quoting only guards reserved words.
    return '"' + identifier.replace('"', '""') + '"'


def _split(script: str) -> list[str]:
    return [statement.strip() for statement in script.split(";") if statement.strip()]


_PLACEHOLDER = re.compile(r"\$(\d+)")


def for_psycopg(sql: str) -> str:
    """``sql`` with ``$n`` placeholders as psycopg's named ``%(pn)s`` (a literal ``%`` doubled)."""
    return _PLACEHOLDER.sub(r"%(p\1)s", sql.replace("%", "%%"))


def advisory_key(schema: str) -> int:
    """The advisory lock that serialises schema changes in ``schema`` (a signed 64-bit int)."""
    digest = hashlib.sha256(f"microbatching:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
