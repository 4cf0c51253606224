"""What an adapter is: how jobs reach the engine and leave it, for one kind of queue.

Adapters see the engine only through :class:`EngineSide`, the few calls it offers them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import TYPE_CHECKING, Any, Protocol

from .._job import Job

if TYPE_CHECKING:
    from .._options import Options

__all__ = ["Adapter", "EngineSide"]


class EngineSide(Protocol):
    """The engine as an adapter sees it."""

    options: Options
    loop: asyncio.AbstractEventLoop

    @property
    def draining(self) -> bool:
        """Whether shutdown has begun (queues stop fetching new jobs then)."""
        ...

    def accept(self, job: Job[Any]) -> None:
        """Put a ready job into the buffer (loop thread)."""

    def deliver(self, job: Job[Any]) -> None:
        """A job delivered by the queue, this process's own or submitted elsewhere (loop thread)."""

    def deliver_threadsafe(self, job: Job[Any]) -> None:
        """``deliver`` from any thread."""

    def hold_for_retry(self, job: Job[Any], delay: float) -> None:
        """Keep ``job`` in memory for ``delay`` seconds, then hand it to the adapter's ``requeue``."""

    def fail_for_good(self, job: Job[Any], error: BaseException) -> None:
        """Give ``job`` its final failure now."""

    def release(self, job: Job[Any]) -> None:
        """``job`` left this process without an outcome here (a durable queue took it back)."""


class Adapter:
    """The in-memory queue: admitted jobs go straight into the buffer and retried jobs back
    into it; there is nothing to acknowledge."""

    #: Whether admitted jobs go straight into the buffer (the engine then fills it inline).
    direct = True
    #: Whether finished jobs must be told one by one (``finished``), e.g. to acknowledge them.
    settles = False

    engine: EngineSide

    def attach(self, engine: EngineSide) -> None:
        self.engine = engine

    def prepare(self, job: Job[Any]) -> None:
        """Check (or encode) a job in the submitter's thread, before it is accepted.

        Raising here refuses the submit with that error; nothing has been stored.
        """

    def admit(self, job: Job[Any]) -> None:
        """A submitted job enters the queue."""
        self.engine.accept(job)

    def retry(self, job: Job[Any], delay: float) -> None:
        """A failed job gets another attempt after ``delay`` seconds.

        The default holds it in memory; a durable queue may instead store the delay and
        release the job (``engine.release(job)``), so a crash loses nothing.
        """
        self.engine.hold_for_retry(job, delay)

    def requeue(self, job: Job[Any]) -> None:
        """A job whose retry delay has passed goes back through the queue."""
        self.engine.accept(job)

    def delivered(self, job: Job[Any]) -> tuple[Job[Any], bool]:
        """The job to process for a delivered ``job``, and whether it already counts as pending here.

        A job this process submitted (or a copy of it) counts since its submit; one from
        elsewhere, or one this process gave back to a durable queue, counts from now.
        """
        return job, True

    def start(self) -> None:
        """Begin delivering jobs (called once, on the loop thread, by the batcher's start)."""

    def finished(self, job: Job[Any], error: BaseException | None) -> None:
        """A job reached its final outcome (``error`` is ``None`` on success)."""

    def abandon(self) -> list[Job[Any]]:
        """Give up on jobs still inside the queue; returns them so their handles fail."""
        return []

    # -- storing (durable queues: jobs accepted but not yet written) ------------------------

    def has_store_room(self) -> bool:
        """Whether another accepted job may wait to be stored (always, when nothing is stored)."""
        return True

    def wait_for_store_room(self, timeout: float | None) -> bool:
        """Block (not on the loop) until ``has_store_room``; False if ``timeout`` passed first."""
        return True

    async def store_room(self) -> None:
        """Wait on the loop until ``has_store_room``."""

    def watch_stored(self, job: Job[Any]) -> concurrent.futures.Future[None] | None:
        """A future resolved once ``job`` is stored (``None``: nothing is stored, nothing to wait for)."""
        return None

    async def close(self) -> None:
        """Release the queue's resources at the end of shutdown."""
