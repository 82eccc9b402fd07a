"""The handler that stands in for a signal's default while `python -m
yimmo` starts.

SIGHUP, SIGUSR1, SIGTTIN and SIGTTOU kill or stop a process by default,
and a `systemctl reload` just after a start, or logrotate's SIGUSR1 during
a restart, sends them while the app is still being imported. From the
start of `python -m yimmo` until the server or the supervisor installs its
own handlers, a StandIn notes them instead. Whoever installs a handler
next treats the StandIn as the default (is_default) and acts on what it
noted (StandIn.take), so no moment is left between the import and the
server's handlers where the default action applies.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Dict, Optional

# Signals the StandIn covers.
NAMES = ("SIGHUP", "SIGUSR1", "SIGTTIN", "SIGTTOU")


class StandIn:
    """A Python signal handler counting the signals it gets, per signal.

    It runs on the main thread between two bytecodes, as every Python
    signal handler does; take() does too, so a count is never torn."""

    def __init__(self) -> None:
        self.counts: Dict[int, int] = {}

    def __call__(self, signum: int, frame: Optional[FrameType]) -> None:
        self.counts[signum] = self.counts.get(signum, 0) + 1

    def take(self, signum: int) -> bool:
        """Whether signum came since the last take() (once or more: like
        the kernel, which does not queue standard signals, a handler acts
        once on several). Call it once the StandIn no longer handles
        signum, or it may come again right after."""
        return self.counts.pop(signum, 0) > 0


def is_default(handler: object) -> bool:
    """The handler counts as the signal's default (SIG_DFL, None: not set
    from Python, or a StandIn)."""
    return handler in (signal.SIG_DFL, None) or isinstance(handler, StandIn)


def take_over(signum: int, previous: object) -> bool:
    """After a handler replaced previous for signum: whether the signal
    came while previous (a StandIn) noted it, for the new handler to act
    on."""
    return isinstance(previous, StandIn) and previous.take(signum)
