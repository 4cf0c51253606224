"""Testing helpers: the queue conformance suite, and a virtual-clock event loop.

**The conformance suite** states what "a correct queue" means, runnable against any
queue.  Subclass :class:`QueueConformance` in a test module (name the subclass ``Test...``)
and implement ``make_queue``; pytest then runs every case against your queue::

    from microbatching.testing import QueueConformance

    class TestMyQueue(QueueConformance):
        def make_queue(self):
            return MyQueue("redis://localhost", stream=self.queue_name)

Cases a queue's declared :class:`~microbatching.queues.QueueCapabilities` rule out are
skipped, saying why; a push queue (``add``/``process`` only) runs the batcher-level cases.

**The virtual clock**: :class:`VirtualClockLoop` is an event loop whose clock jumps to the
next timer whenever it would sleep, so a test of your processor's timing (a batch leaves
after exactly ``batch_interval``, a retry after its delay) runs in no real time and asserts
exact times.  ``run_on_virtual_clock(main())`` is ``asyncio.run`` on it.  This module needs pytest.
"""

from ._clock import VirtualClockLoop, run_on_virtual_clock
from ._conformance import QueueConformance

__all__ = ["QueueConformance", "VirtualClockLoop", "run_on_virtual_clock"]
