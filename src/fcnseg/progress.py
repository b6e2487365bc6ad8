"""Progress that reads well on a terminal and in a log file.

On a terminal a :class:`Progress` is a tqdm bar; when stderr is not a terminal (a batch job, ``| tee``,
CI) it prints one plain line every ``FCNSEG_PROGRESS_INTERVAL`` seconds (default 30) and at the end,
never ``\\r`` updates. :meth:`Progress.write` prints a line above the bar either way.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm

__all__ = ["Progress"]


def _interval() -> float:
    try:
        return float(os.environ.get("FCNSEG_PROGRESS_INTERVAL", "30"))
    except ValueError:
        return 30.0


class Progress:
    """Counts ``total`` units of work (``None`` when unknown) from ``initial``.

    Args:
        total: units in all; ``None`` when unknown.
        desc: what is counted ("train", "eval", "predict").
        unit: the unit's name ("step", "img").
        enabled: False prints nothing at all (``--quiet``, processes other than rank 0).
        initial: units already done (a resumed run).
    """

    def __init__(self, total: int | None, desc: str, unit: str, *, enabled: bool = True, initial: int = 0):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n, self.postfix = initial, ""
        self._t0 = time.perf_counter()
        self._initial = initial
        self._last_line = self._t0
        self._tty = sys.stderr.isatty()
        self._bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1)
                     if enabled and self._tty else None)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` more units; ``postfix`` values (loss, images/s...) are shown beside the count."""
        self.n += n
        if postfix:
            self.postfix = ", ".join(f"{k}={v}" for k, v in postfix.items())
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix_str(self.postfix, refresh=False)
        elif self.enabled and time.perf_counter() - self._last_line >= _interval():
            self._line()

    def _line(self) -> None:
        self._last_line = now = time.perf_counter()
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        rate = (self.n - self._initial) / max(now - self._t0, 1e-9)
        eta = ""
        if self.total and rate > 0:
            eta = f", eta {_hms((self.total - self.n) / rate)}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} ({rate:.2f} {self.unit}/s, {_hms(now - self._t0)} elapsed{eta}"
              f"{extra})", file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        """Print ``message`` on its own line (above the bar on a terminal)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self.n > self._initial:
            self._line()
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
