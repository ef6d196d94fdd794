"""A wake-up at an exact instant that an event loop can wait on beside its sockets: a Linux
timerfd on CLOCK_MONOTONIC (the clock of `time.monotonic`), armed at an absolute time.

epoll's own timeout is whole milliseconds, rounded up, which made the delay line release ~0.5 ms
late on average; spinning in short sleeps through the last millisecond fixed that at ~100 µs of
CPU per packet. A timerfd fires within the kernel's timer slack (none under SCHED_FIFO) and costs
one wake-up. Python gains `os.timerfd_create` only in 3.13; until then libc's, through ctypes.
"""

from __future__ import annotations

import ctypes
import os

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)


class Alarm:
    """One timerfd: `at` arms it for an instant of `time.monotonic()`, `disarm` stops it, and its
    `fd` turns readable when it fires (`clear` reads the expiry off)."""

    def __init__(self) -> None:
        self.fd = _libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "timerfd_create failed")
        self.armed: float | None = None

    def at(self, instant: float) -> None:
        """Fires at `instant` (now, if it has passed); a no-op when already armed for it."""
        if instant == self.armed:
            return
        seconds, nanoseconds = divmod(max(1, round(instant * 1e9)), 1_000_000_000)  # all zero would disarm
        self._set(_Itimerspec(_Timespec(0, 0), _Timespec(seconds, nanoseconds)))
        self.armed = instant

    def disarm(self) -> None:
        if self.armed is not None:
            self._set(_Itimerspec())
            self.armed = None

    def clear(self) -> None:
        """Reads the expiry count so the fd stops being readable; the alarm is spent."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass
        self.armed = None

    def close(self) -> None:
        os.close(self.fd)

    def _set(self, spec: _Itimerspec) -> None:
        if _libc.timerfd_settime(self.fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
