"""The public API is exactly what the docs promise."""

import microbatching

DOCUMENTED = {
    "AsyncMicroBatching", "MicroBatching", "batch",
    "Batch", "Job", "JobResult",
    "DEFAULT_BATCH_INTERVAL", "DEFAULT_BATCH_SIZE", "DEFAULT_RETRY", "RetryPolicy",
    "BatchProcessorInterface", "MemoryQueue", "QueueInterface",
    "EVENTS", "EventEmitter", "State", "Stats",
    "BatchResultError", "BatchTimeoutError", "DeadlineExceededError", "JobCancelledError",
    "JobFailedError", "MicroBatchingError", "OverloadedError", "PayloadTooLargeError", "QueueFullError",
    "SerializationError", "ShutdownError",
    "Summary",
}  # fmt: skip


def test_all_is_the_documented_api() -> None:
    assert set(microbatching.__all__) >= DOCUMENTED
    for name in microbatching.__all__:
        assert getattr(microbatching, name) is not None


def test_public_names_have_docstrings() -> None:
    for name in microbatching.__all__:
        obj = getattr(microbatching, name)
        if callable(obj) and not isinstance(obj, dict):
            assert obj.__doc__, f"{name} has no docstring"


def test_every_error_derives_from_the_common_base() -> None:
    errors = [getattr(microbatching, n) for n in microbatching.__all__ if n.endswith("Error")]
    assert errors
    for error in errors:
        assert issubclass(error, microbatching.MicroBatchingError)
