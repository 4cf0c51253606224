"""Bad options are refused at construction with a clear error naming the problem."""

from __future__ import annotations

from typing import Any

import pytest

from microbatching import DEFAULT_BATCH_INTERVAL, DEFAULT_BATCH_SIZE, AsyncMicroBatching, Job, MicroBatching


def ok(jobs: list[Job[Any]]) -> list[Any]:
    return [None for _ in jobs]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
        ({"batch_size": -5}, ValueError, "batch_size must be >= 1, got -5"),
        ({"batch_size": 2.5}, TypeError, "batch_size must be an int, got float 2.5"),
        ({"batch_size": "10"}, TypeError, "batch_size must be an int, got str '10'"),
        ({"batch_size": True}, TypeError, "batch_size must be an int"),
        ({"batch_interval": -1}, ValueError, "batch_interval must be finite and >= 0, got -1"),
        ({"batch_interval": float("nan")}, ValueError, "batch_interval must be finite"),
        ({"batch_interval": float("inf")}, ValueError, "batch_interval must be finite"),
        ({"batch_interval": "1s"}, TypeError, "batch_interval must be a number"),
        ({"max_concurrent_batches": 0}, ValueError, "max_concurrent_batches must be >= 1"),
        ({"max_pending": 0}, ValueError, "max_pending must be >= 1"),
        ({"batch_timeout": 0}, ValueError, "batch_timeout must be finite and > 0"),
        ({"max_batch_weight": 10}, TypeError, "max_batch_weight needs weight="),
        ({"max_batch_weight": -1, "weight": len}, ValueError, "max_batch_weight must be finite and > 0"),
        ({"weight": len}, TypeError, "weight= has no effect without max_batch_weight="),
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy or None, got 3"),
        ({"batch_sise": 10}, TypeError, "unknown option 'batch_sise'; did you mean 'batch_size'"),
    ],
)
@pytest.mark.parametrize("batcher", [MicroBatching, AsyncMicroBatching])
def test_bad_option_is_refused_naming_it(
    batcher: type[Any], options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        batcher(None, ok, **options)


@pytest.mark.parametrize("processor", [None, 42, "process", object()])
def test_processor_must_be_callable_or_have_process_batch(processor: Any) -> None:
    with pytest.raises(TypeError, match="processor"):
        MicroBatching(None, processor)


def test_defaults_are_the_documented_ones() -> None:
    mb = MicroBatching(None, ok)
    assert (mb.options.batch_size, mb.options.batch_interval) == (DEFAULT_BATCH_SIZE, DEFAULT_BATCH_INTERVAL)
    assert (DEFAULT_BATCH_SIZE, DEFAULT_BATCH_INTERVAL) == (100, 0.05)
    assert mb.options.retry is not None and mb.options.retry.max_attempts == 3
    assert mb.options.max_concurrent_batches == 1
    assert mb.options.max_pending is None


def test_options_are_not_validated_with_assert() -> None:
    import pathlib

    import microbatching

    package = pathlib.Path(microbatching.__file__).parent
    offenders = [
        f"{path.name}:{n}"
        for path in package.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if line.strip().startswith("assert ")
    ]
    assert offenders == []


def test_submitting_something_that_is_not_a_job_names_the_mistake() -> None:
    with MicroBatching(None, ok) as mb, pytest.raises(TypeError, match=r"submit a Job, e\.g\. Job"):
        mb.submit_job("raw data")  # type: ignore[arg-type]


def test_a_bare_exception_class_as_retry_on_means_that_class_only() -> None:
    from microbatching import RetryPolicy

    policy = RetryPolicy(retry_on=ValueError)  # type: ignore[arg-type]
    assert policy.retry_on == (ValueError,)
    assert policy.should_retry(ValueError(), 1)
    assert not policy.should_retry(KeyError(), 1)


def test_a_closed_batcher_says_it_cannot_be_restarted() -> None:
    mb = MicroBatching(None, ok)
    mb.start()
    mb.shutdown()
    with pytest.raises(Exception, match="cannot be restarted"):
        mb.start()
