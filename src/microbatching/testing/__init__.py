"""The queue conformance suite: what "a correct queue" means, runnable against any queue.

Subclass :class:`QueueConformance` in a test module (name the subclass ``Test...``) and
implement ``make_queue``; pytest then runs every case against your queue::

    from microbatching.testing import QueueConformance

    class TestMyQueue(QueueConformance):
        def make_queue(self):
            return MyQueue("redis://localhost", stream=self.queue_name)

Cases a queue's declared :class:`~microbatching.QueueCapabilities` rule out are
skipped, saying why; a push queue (``add``/``process`` only) runs the batcher-level cases.
Needs pytest.
"""

from ._conformance import QueueConformance

__all__ = ["QueueConformance"]
