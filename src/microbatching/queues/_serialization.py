"""Encoding job data for durable queues: JSON by default, pickle only when asked for."""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol, runtime_checkable

from ..errors import PayloadTooLargeError, SerializationError

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "JsonSerializer",
    "PayloadTooLargeError",
    "PickleSerializer",
    "SerializationError",
    "Serializer",
    "resolve_serializer",
]

#: 1 MiB: far above a typical job's data, far below what would hurt a queue.
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024


@runtime_checkable
class Serializer(Protocol):
    """Turns job ids and data into bytes and back; ``name`` is recorded in the queue."""

    name: str

    def dumps(self, value: Any) -> bytes:
        """Encode ``value``; raise ``TypeError`` or ``ValueError`` if it cannot be."""
        ...

    def loads(self, data: bytes) -> Any:
        """Decode what ``dumps`` produced."""
        ...


# Built once: json.dumps/loads with options build a new encoder or decoder on every call.
_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_json_decoder = json.JSONDecoder()
_json_scan: Any = getattr(_json_decoder, "scan_once")  # noqa: B009 (untyped attribute)
# The C encoder behind JSONEncoder, made once, without the circular-reference markers (a
# cycle recurses until RecursionError; then the full encoder runs again to say "Circular").
# It is a private CPython function called by position: this is the one place that does, it
# is used only if it encodes a sample exactly as the public encoder does, and
# FAST_JSON_ENCODER says whether it is (a test fails loudly on a Python where it is not).
_SAMPLE = {"s": 'h\u00e9 \u2603 "q"', "n": [1, 2.5, -3, None, True], "d": {"k": []}}


def _make_c_encoder() -> Any:
    try:
        encoder = getattr(json.encoder, "c_make_encoder")(  # noqa: B009 (untyped attribute)
            None, _json_encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )
        same = "".join(encoder(_SAMPLE, 0)) == _json_encoder.encode(_SAMPLE)
    except Exception:  # no C accelerator, or another signature: the public encoder then
        return None
    return encoder if same else None


_c_encode: Any = _make_c_encoder()
#: Whether the fast C encoder is in use on this Python.
FAST_JSON_ENCODER = _c_encode is not None


class JsonSerializer:
    """Strict JSON (no NaN or infinities), UTF-8, compact.  Tuples come back as lists."""

    name = "json"

    def dumps(self, value: Any) -> bytes:
        if _c_encode is None or type(value) is str:
            return _json_encoder.encode(value).encode()
        try:
            return "".join(_c_encode(value, 0)).encode()
        except RecursionError:
            return _json_encoder.encode(value).encode()  # says whether it is a cycle

    def loads(self, data: bytes) -> Any:
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return json.loads(data)  # UTF-16/32 written by another tool: let json detect it
        try:
            value, end = _json_scan(text, 0)
        except StopIteration:
            end = -1
        return value if end == len(text) else _json_decoder.decode(text)  # the full parser explains errors


class PickleSerializer:
    """Pickle: any picklable object.  Only for queues whose every writer you trust:
    unpickling runs code chosen by whoever wrote the payload."""

    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError) as exc:
            raise TypeError(str(exc)) from exc

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # opt-in, documented: trusted writers only


def resolve_serializer(serializer: str | Serializer) -> Serializer:
    """``"json"`` (the default), ``"pickle"`` (explicit opt-in) or a :class:`Serializer` object."""
    if serializer == "json":
        return JsonSerializer()
    if serializer == "pickle":
        return PickleSerializer()
    if isinstance(serializer, Serializer) and not isinstance(serializer, str):
        return serializer
    raise ValueError(f"serializer must be 'json', 'pickle' or a Serializer object, got {serializer!r}")


def encode(serializer: Serializer, job_id: Any, data: Any, limit: int | None) -> tuple[bytes, bytes]:
    """The encoded id and data of a job, or a clear error naming the job."""
    try:
        encoded_id = serializer.dumps(job_id)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"job id {job_id!r} cannot be encoded as {serializer.name}: {exc}") from exc
    try:
        payload = serializer.dumps(data)
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        hint = (
            " (pass serializer='pickle' to the queue to store any picklable object)"
            if (serializer.name == "json")
            else ""
        )
        raise SerializationError(
            f"data of job {job_id!r} cannot be encoded as {serializer.name}: {exc}{hint}"
        ) from exc
    if limit is not None and len(payload) > limit:
        raise PayloadTooLargeError(
            f"data of job {job_id!r} is {len(payload)} bytes encoded, over the queue's "
            f"max_payload_bytes={limit}"
        )
    return encoded_id, payload
