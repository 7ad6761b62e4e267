"""Stop requests from signals (Ctrl-C, SIGTERM), seen by the training loop at its next step.

A signal handler stops the program by raising in whatever code runs when the signal lands. When
that code is a finalizer (a weak reference's callback, a `__del__`), Python prints "Exception
ignored in ..." and goes on, and the run would train to its end. So the handlers also leave a
request here, which the training loop checks once per step (a Python attribute: no host sync)."""
from __future__ import annotations

import signal


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so a trial can record that it was interrupted."""


_pending: KeyboardInterrupt | None = None


def _request(error: KeyboardInterrupt) -> None:
    global _pending
    _pending = error
    raise error


def _on_sigterm(signum, frame) -> None:
    _request(Interrupted())


def _on_sigint(signum, frame) -> None:
    _request(KeyboardInterrupt())


def install() -> dict:
    """Installs the handlers; returns the previous ones for `restore`."""
    return {signal.SIGTERM: signal.signal(signal.SIGTERM, _on_sigterm),
            signal.SIGINT: signal.signal(signal.SIGINT, _on_sigint)}


def restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
    clear()


def check() -> None:
    """Raises a pending request whose first raise was swallowed."""
    if _pending is not None:
        raise _pending


def requested() -> bool:
    """A signal came (and was not yet handled): an error raised meanwhile may be its echo, e.g. an
    import it interrupted half-way."""
    return _pending is not None


def clear() -> None:
    """The request has been handled (its trial marked interrupted)."""
    global _pending
    _pending = None
