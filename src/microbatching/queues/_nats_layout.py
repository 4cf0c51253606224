"""What a NatsQueue keeps on the server, how its messages are laid out, and its URL.

Names: for ``stream=S`` and ``consumer=C``, the work-queue stream ``S`` on ``mb.S.ready``
and ``mb.S.delayed`` with the durable pull consumers ``C`` and ``C-delayed``; the
dead-letter stream ``S-dead`` on ``mb.S.dead``; the tally stream ``S-tally`` on
``mb.S.tally``.  A message body is the encoded job id, length-prefixed, then the encoded
data; headers carry what the broker does not count itself (see ``ATTEMPTS`` and below).
"""

from __future__ import annotations

import base64
import json
import re
import ssl
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ._jetstream import tls_context
from ._registry import redact
from ._types import Lease, StoredDeadLetter

__all__ = [
    "ATTEMPTS", "DUE", "ENQUEUED", "KEY", "MSG_ID", "RECOVERED", "Held", "Layout", "connect_options",
    "dead_letter", "dead_record", "frame", "number", "positive", "query_names", "server_url", "unframe",
    "unix",
]  # fmt: skip

#: JetStream's deduplication header: a message id seen within the duplicate window is not stored again.
MSG_ID = "Nats-Msg-Id"
#: The job's message key, on copies (an original's key is its message id).
KEY = "Mb-Key"
#: Attempts spent on earlier copies of the job; this copy's deliveries are counted by the broker.
ATTEMPTS = "Mb-Attempts"
#: Leases of earlier copies that ran out without an outcome.
RECOVERED = "Mb-Recovered"
#: When the job was first enqueued (Unix time; an original's is its stream timestamp).
ENQUEUED = "Mb-Enqueued"
#: When a delayed job is due (Unix time).
DUE = "Mb-Due"

_NAME = re.compile(r"[A-Za-z0-9_-]{1,48}")
_LEN = struct.Struct(">I")


@dataclass(frozen=True)
class Held:
    """A lease's handle on its delivery: the reply subject to settle it, and the stored message."""

    reply: str
    seq: int
    body: bytes
    enqueued: float


@dataclass(frozen=True)
class Layout:
    """The streams, subjects and consumers of the queue ``stream``/``consumer``."""

    stream: str
    consumer: str

    def __post_init__(self) -> None:
        for what, value in (("stream", self.stream), ("consumer", self.consumer)):
            if not _NAME.fullmatch(value):
                raise ValueError(f"{what} must be 1-48 letters, digits, _ or -, got {value!r}")

    @property
    def dead(self) -> str:
        return f"{self.stream}-dead"

    @property
    def tally(self) -> str:
        return f"{self.stream}-tally"

    @property
    def streams(self) -> tuple[str, str, str]:
        return self.stream, self.dead, self.tally

    @property
    def delayed_consumer(self) -> str:
        return f"{self.consumer}-delayed"

    def subject(self, kind: str) -> str:
        """``mb.<stream>.<kind>``: ready, delayed, dead or tally."""
        return f"mb.{self.stream}.{kind}"

    def stream_configs(self, duplicate_window: float, replicas: int) -> list[dict[str, Any]]:
        """The three streams: jobs (work queue), dead letters, and the tally (one message kept)."""
        common = {"storage": "file", "num_replicas": replicas, "discard": "old",
                  "duplicate_window": int(duplicate_window * 1e9)}  # fmt: skip
        jobs = [self.subject("ready"), self.subject("delayed")]
        return [
            {"name": self.stream, "subjects": jobs, "retention": "workqueue", **common},
            {"name": self.dead, "subjects": [self.subject("dead")], "retention": "limits", **common},
            {"name": self.tally, "subjects": [self.subject("tally")], "retention": "limits", "max_msgs": 1,
             **common},
        ]  # fmt: skip

    def consumer_configs(self, ack_wait: float) -> list[tuple[str, dict[str, Any]]]:
        """The two durable pull consumers (name, request): ready jobs, and delayed jobs."""
        return [
            (name, {"stream_name": self.stream, "config": {
                "durable_name": name, "filter_subject": subject, "ack_policy": "explicit",
                "ack_wait": int(ack_wait * 1e9), "max_deliver": -1, "max_ack_pending": -1,
                "deliver_policy": "all", "replay_policy": "instant"}})
            for name, subject in ((self.consumer, self.subject("ready")),
                                  (self.delayed_consumer, self.subject("delayed")))
        ]  # fmt: skip


def frame(job_id: bytes, payload: bytes) -> bytes:
    """A message body: the encoded job id, length-prefixed, then the encoded data."""
    return _LEN.pack(len(job_id)) + job_id + payload


def unframe(body: bytes) -> tuple[bytes, bytes]:
    """The encoded id and data of a body (a body that is not framed decodes as nothing, and fails)."""
    if len(body) >= _LEN.size:
        (size,) = _LEN.unpack_from(body)
        if _LEN.size + size <= len(body):
            return body[_LEN.size : _LEN.size + size], body[_LEN.size + size :]
    return b"", body


def dead_record(lease: Lease, error: str, trace: str | None, now: float) -> bytes:
    """The dead-letter stream's message for a job: JSON with its id, data, attempts and error."""
    held: Held = lease.ref
    job_id, payload = unframe(held.body)
    record = {"key": lease.key, "job_id": _b64(job_id), "payload": _b64(payload), "attempts": lease.attempts,
              "error": error, "traceback": trace, "failed_at": now, "enqueued": held.enqueued}  # fmt: skip
    return json.dumps(record).encode()


def dead_letter(seq: int, data: str) -> tuple[StoredDeadLetter, str]:
    """A dead letter read back (its key is its sequence in the dead-letter stream), and its job's key."""
    record: dict[str, Any] = json.loads(base64.b64decode(data))
    job_id, payload = base64.b64decode(record["job_id"]), base64.b64decode(record["payload"])
    stored = StoredDeadLetter(str(seq), job_id, payload, record["attempts"], record["error"],
                              record["failed_at"], record.get("traceback"))  # fmt: skip
    return stored, str(record["key"])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def number(text: str | None, default: float) -> float:
    """A header's number, or ``default`` when absent or unreadable."""
    try:
        return default if text is None else float(text)
    except ValueError:
        return default


def unix(text: str) -> float | None:
    """Unix time of an RFC 3339 UTC timestamp with up to nanoseconds (``2026-12-02T17:38:48.0208Z``)."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    try:
        moment = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    except ValueError:
        return None
    return moment.timestamp() + (float(f"0.{fraction}") if fraction.isdigit() else 0.0)


# -- the URL ----------------------------------------------------------------------------------------


def query_names(url: str) -> set[str]:
    """The option names given in ``url``'s query."""
    return {name for name, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}


def server_url(url: str) -> str:
    """The server part of a queue URL, credentials included, for the client (the query is options)."""
    parts = urlsplit(url)
    if parts.scheme not in ("nats", "tls"):
        raise ValueError(f"not a NATS URL: {redact(url)!r} (use nats://host:4222 or tls://host:4222)")
    if parts.path not in ("", "/"):
        raise ValueError(f"{redact(url)!r}: name the queue in the query (?stream=...), not the path")
    return urlunsplit((parts.scheme, parts.netloc or "127.0.0.1:4222", "", "", ""))


def connect_options(url: str, options: dict[str, Any], tls: ssl.SSLContext | None) -> dict[str, Any]:
    """nats-py's connect options for the URL's credentials and TLS settings."""
    connect: dict[str, Any] = {}
    for name, option in (("token", "token"), ("user_credentials", "creds"), ("nkeys_seed", "nkey"),
                         ("tls_hostname", "tls_hostname")):  # fmt: skip
        if options[option]:
            connect[name] = options[option]
    wants_tls = tls is not None or options["tls_ca"] or options["tls_cert"]
    if wants_tls and not url.startswith("tls://"):
        raise ValueError(f"{redact(url)!r}: TLS options need a tls:// URL")
    if tls is None and wants_tls:
        tls = tls_context(options["tls_ca"], options["tls_cert"], options["tls_key"])
    if tls is not None:
        connect["tls"] = tls
    return connect


def positive(name: str, value: float) -> float:
    """``value`` as seconds, refused unless > 0."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return float(value)
