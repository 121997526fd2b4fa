"""Progress bars that suit both a terminal and a batch log (SLURM, a quickstart log, `> out.txt`).

    from RandAR.utils.progress import progress
    for batch in progress(loader, desc="extract", unit="img"): ...

On a terminal this is plain tqdm. When the bar's stream is not a terminal, tqdm's in-place redraws would land in
the log as one line per update; there the bar prints a plain line (with rate and ETA) at most every
LOG_INTERVAL_S seconds, however often it is updated or its postfix is set, and a last line when it closes.
"""
import sys

from tqdm import tqdm

LOG_INTERVAL_S = 30.0


def line_buffered_output() -> None:
    """Write stdout and stderr through at every newline, also when they are files (a batch system's log), so
    that the lines a process printed are in the log when it is killed (preemption, SIGKILL, out of memory).
    Called first in the main of every launcher and tool."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # not when a caller replaced the stream with another object
            stream.reconfigure(line_buffering=True)


def progress(iterable=None, **kwargs) -> tqdm:
    """tqdm(iterable, **kwargs), throttled to one line per LOG_INTERVAL_S when its stream is not a terminal."""
    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(iterable, **kwargs)
    kwargs.update(file=_LogLines(stream), mininterval=LOG_INTERVAL_S, miniters=1, dynamic_ncols=False)
    return _LogProgress(iterable, **kwargs)


class _LogLines:
    """The stream of a log bar: tqdm writes '\\r' + status + padding to redraw a line; a log gets one line per
    status and none of tqdm's clearing writes ('', '\\r', '\\n')."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str):
        line = text.replace("\r", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self):
        self.stream.flush()


class _LogProgress(tqdm):
    """tqdm whose every display, including the ones `set_postfix` and `refresh` force, waits `mininterval`
    seconds after the previous line; the closing line always prints."""

    _last_line_t = None

    def display(self, msg=None, pos=None):
        if msg is not None:  # tqdm clearing the bar: nothing to clear in a log
            return False
        now = self._time()
        closing = self.disable  # close() disables the bar before its last display
        if not closing and self._last_line_t is not None and now - self._last_line_t < self.mininterval:
            return False
        self._last_line_t = now
        return super().display(msg, pos)
