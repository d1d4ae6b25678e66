"""Stopping a run on SIGTERM or SIGINT (Ctrl-C): the step finishes, a complete checkpoint is written, exit 0.

    signals = StopSignals(lambda: f"the checkpoint of step {n} is being written")
    signals.install()                 # while the training loop runs
    if signals.requested: ...         # checked once per step (the trainer agrees it across ranks)
    signals.done()                    # after the loop: handlers back, or ignored after a stop

What a second Ctrl-C means: nothing more. Once a stop is requested, further SIGINT / SIGTERM
neither interrupt the checkpoint being written nor change the exit code; the first of them
prints one line ("already stopping: ...") so an impatient user sees the run heard it, later ones
print nothing. After the stop's checkpoint, both signals stay ignored until the process exits
(Python would otherwise give Ctrl-C its default meaning back for the last moments of the
process). To end a run without its checkpoint, kill it (SIGKILL): the previous checkpoint and
``latest`` are untouched by a kill at any moment.
"""
from __future__ import annotations

import signal
from typing import Callable

from gan.log import get_logger

log = get_logger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """SIGTERM / SIGINT handlers of one training loop.

    Args:
        pending: what the run is doing to stop, for the one line a second signal prints
            (e.g. "the checkpoint of step 120 is being written").
    """

    def __init__(self, pending: Callable[[], str]):
        self.pending = pending
        self.requested = False
        self._noted = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Take SIGTERM and SIGINT (main thread only); ``done`` gives them back."""
        self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}

    def done(self) -> None:
        """The loop is over: the previous handlers back, or, after a stop, both signals ignored until exit."""
        for s, previous in self._previous.items():
            signal.signal(s, signal.SIG_IGN if self.requested else previous)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if not self.requested:
            self.requested = True
            return
        if not self._noted:
            self._noted = True
            log.warning("already stopping: %s; the run then exits (pressing Ctrl-C again changes nothing)",
                        self.pending())
