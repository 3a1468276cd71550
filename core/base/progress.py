"""Progress reporting and cancellation shared by every long computation.

A computation receives a ``Progress`` and calls ``progress.update(fraction, message, partial)``
as it goes. The callback sees a ``ProgressEvent`` (fraction done, ETA, partial result); a set
``cancel`` event makes the next update raise ``Cancelled``, so work stops at a clean point and
the caller writes nothing. ``Progress.stage`` maps a sub-computation onto a slice of the bar.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from core.base.errors import Cancelled


@dataclass(frozen=True)
class ProgressEvent:
    fraction: float
    message: str
    eta_s: float | None
    elapsed_s: float
    partial: Any = None


ProgressCallback = Callable[[ProgressEvent], None]


class Progress:
    """Fraction-based progress with ETA; ``stage(lo, hi)`` gives a child mapped onto [lo, hi]."""

    def __init__(
        self,
        callback: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        _span: tuple[float, float] = (0.0, 1.0),
        _start: float | None = None,
    ):
        self.callback = callback
        self.cancel = cancel
        self.span = _span
        self.start = time.monotonic() if _start is None else _start

    def update(self, fraction: float, message: str = "", partial: Any = None) -> None:
        """Report ``fraction`` (0..1) of this stage done; raise ``Cancelled`` if asked to stop."""
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("cancelled by request")
        if self.callback is None:
            return
        lo, hi = self.span
        overall = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
        elapsed = time.monotonic() - self.start
        eta = elapsed * (1 - overall) / overall if overall > 1e-6 else None
        self.callback(ProgressEvent(overall, message, eta, elapsed, partial))

    def stage(self, lo: float, hi: float) -> "Progress":
        """A child progress whose 0..1 maps onto [lo, hi] of this one."""
        a, b = self.span
        return Progress(self.callback, self.cancel, (a + (b - a) * lo, a + (b - a) * hi), self.start)


def stderr_bar(event: ProgressEvent) -> None:
    """CLI callback: a one-line progress bar on stderr (stdout stays clean for JSON)."""
    width = 30
    filled = int(round(event.fraction * width))
    eta = f" ETA {event.eta_s:5.0f}s" if event.eta_s is not None else ""
    line = f"\r[{'#' * filled}{'.' * (width - filled)}] {event.fraction * 100:5.1f}%{eta} {event.message[:60]:<60}"
    sys.stderr.write(line)
    if event.fraction >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()
