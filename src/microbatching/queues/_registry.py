"""Queues by URL: which class serves a scheme, ``open_queue(url)``, and URLs made safe to print."""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import InvalidQueueError

if TYPE_CHECKING:
    from ._base import ClaimQueue

__all__ = ["open_queue", "query_options", "redact", "register_scheme", "resolve_options", "schemes", "scrub"]

# scheme -> (module, class, the extra that installs its client, "" if none)
_SCHEMES: dict[str, tuple[str, str, str]] = {
    "sqlite": ("microbatching.queues.sqlite", "SQLiteQueue", ""),
    "redis": ("microbatching.queues.redis", "RedisQueue", "redis"),
    "rediss": ("microbatching.queues.redis", "RedisQueue", "redis"),
    "nats": ("microbatching.queues.nats", "NatsQueue", "nats"),
    "tls": ("microbatching.queues.nats", "NatsQueue", "nats"),
    "postgresql": ("microbatching.queues.postgres", "PostgresQueue", "postgres"),
    "postgres": ("microbatching.queues.postgres", "PostgresQueue", "postgres"),
    "amqp": ("microbatching.queues.rabbitmq", "RabbitMQQueue", "amqp"),
    "amqps": ("microbatching.queues.rabbitmq", "RabbitMQQueue", "amqp"),
}

#: Query parameters whose values are secrets (libpq, redis-py, NATS and AMQP spellings).
_SECRET_PARAMS = frozenset(
    {"password", "passwd", "pwd", "pass", "secret", "token", "auth", "sslpassword", "nkey", "jwt",
     "creds", "credentials", "api_key", "apikey", "access_token"}
)  # fmt: skip
# Credentials: from // to the last @ before a space or quote (sqlite:///path has none).
_USERINFO = re.compile(r"(?<!/)//(?!/)([^\s'\"<>]*)@")
_SECRET_NAMES = "|".join(sorted(_SECRET_PARAMS))
_QUERY_SECRET = re.compile(r"([?&;](?:" + _SECRET_NAMES + r")=)([^&;#\s'\"<>]*)", re.IGNORECASE)


def register_scheme(scheme: str, module: str, cls: str, extra: str = "") -> None:
    """Serve ``scheme://`` URLs with ``module.cls`` (imported on first use; ``extra`` names its install)."""
    _SCHEMES[scheme] = (module, cls, extra)


def schemes() -> list[str]:
    """The URL schemes ``open_queue`` knows."""
    return sorted(_SCHEMES)


def queue_class(url: str) -> type[ClaimQueue]:
    """The queue class serving ``url`` (a plain path is a SQLite file)."""
    scheme = url.partition("://")[0].lower() if "://" in url else "sqlite"
    entry = _SCHEMES.get(scheme)
    if entry is None:
        known = ", ".join(f"{name}://" for name in schemes())
        raise InvalidQueueError(f"unsupported queue URL {redact(url)!r}: the known schemes are {known}")
    module_name, class_name, extra = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if not extra:
            raise
        raise InvalidQueueError(
            f"{scheme}:// queues need their client library: pip install 'microbatching[{extra}]' ({exc})"
        ) from None
    found: type[ClaimQueue] = getattr(module, class_name)
    return found


def open_queue(url: str, **options: Any) -> ClaimQueue:
    """The durable queue ``url`` names, e.g. ``open_queue("sqlite:///jobs.db")``.

    ``options`` are the queue class's keyword arguments (``serializer``, ``lease``,
    ``create``, ...); options in the URL's query take the same names.
    """
    cls: Any = queue_class(url)  # each queue class takes its URL first
    _check_address(url)
    queue: ClaimQueue = cls(url, **options)
    return queue


def _check_address(url: str) -> None:
    """Refuse a network URL whose host or port cannot be read, before a client library meets it.

    Client libraries fail on these in their own ways (some with the password in the
    message, some deep in a connect); one clear error is better.
    """
    if "://" not in url or url.lower().startswith("sqlite:"):
        return
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it validates it
    except ValueError as exc:
        reason = str(exc).partition(" as ")[0]  # the value is left out: it may be a secret
        raise InvalidQueueError(f"cannot read the address of {redact(url)!r}: {reason}") from None


def query_options(url: str, allowed: dict[str, type]) -> dict[str, Any]:
    """The options in ``url``'s query, converted to the types in ``allowed`` (a clear error otherwise)."""
    try:
        pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise ValueError(f"cannot read the options of {redact(url)!r}: {exc}") from None
    options: dict[str, Any] = {}
    for name, text in pairs:
        kind = allowed.get(name)
        if kind is None:
            known = ", ".join(sorted(allowed))
            raise ValueError(f"unknown option {name!r} in {redact(url)!r}; the options are: {known}")
        options[name] = _convert(name, text, kind)
    return options


def resolve_options(url: str, spec: dict[str, tuple[type, Any]], given: dict[str, Any]) -> dict[str, Any]:
    """Each option of ``spec`` (name -> (type, default)) from the URL's query, or from ``given``
    (``None`` = not given), else its default.  Giving one both ways is refused.
    """
    from_url = query_options(url, {name: kind for name, (kind, _) in spec.items()}) if "?" in url else {}
    resolved = {}
    for name, (_, default) in spec.items():
        passed = given.get(name)
        if name in from_url and passed is not None and passed != from_url[name]:
            raise ValueError(
                f"{name} is given both in the URL ({from_url[name]!r}) and as an argument ({passed!r})"
            )
        resolved[name] = from_url.get(name, default if passed is None else passed)
    return resolved


def _convert(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"option {name} must be true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"option {name} must be {kind.__name__}, got {text!r}") from None


def redact(url: str) -> str:
    """``url`` (or a message holding URLs) with passwords, tokens and secret query values as ``***``.

    Never raises.  Whatever lies between ``//`` and the last ``@`` of a URL is taken for
    credentials, even with characters a URL would need escaped (``redis://u:p@ss/w@host``):
    better a URL shown with too much hidden than a password shown.
    """
    try:
        text = _USERINFO.sub(_hide_userinfo, str(url))
        return _QUERY_SECRET.sub(r"\1***", text)
    except Exception:  # a message without the URL beats no message
        return "<the queue URL>"


def _hide_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match.group(1).partition(":")
    return f"//{user}:***@" if colon else "//***@"


def scrub(message: str, url: str) -> str:
    """``message`` with every secret of ``url`` replaced by ``***`` (for client errors); never raises."""
    try:
        for secret in _secrets_of(str(url)):
            # Whole words only: a user name taken for a token ("postgres" in
            # postgresql://postgres@host) must not eat the scheme ("***ql://").
            message = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", message)
    except Exception:
        pass
    return redact(message)


def _secrets_of(url: str) -> list[str]:
    """The passwords (or tokens) and secret query values in ``url``, also percent-decoded, longest first."""
    found = []
    for match in _USERINFO.finditer(url):
        user, colon, password = match.group(1).partition(":")
        found.append(password if colon else user)
    found += [match.group(2) for match in _QUERY_SECRET.finditer(url)]
    # A parser that misreads the URL may quote any piece of a secret cut at a delimiter.
    pieces = [piece for secret in found for piece in re.split(r"[/?#@:]", secret)]
    variants = {variant for secret in found + pieces for variant in (secret, unquote(secret))}
    return sorted((secret for secret in variants if len(secret) >= 3), key=len, reverse=True)
