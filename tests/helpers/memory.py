"""The peak memory of this process over a block of code.

On Linux the kernel's own figure: the peak RSS (VmHWM) is reset to the current RSS by writing 5 to
/proc/self/clear_refs, so the peak measured is the block's, whatever earlier tests held. Elsewhere,
tracemalloc's peak of Python allocations (the buffers a driver holds are Python objects).
"""

from __future__ import annotations

import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MIB = 1024 * 1024


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


class Peak:
    above_start: int = 0  # bytes: the peak during the block minus what the process held at its start
    method: str = ""


@contextmanager
def peak_memory() -> Iterator[Peak]:
    peak = Peak()
    if sys.platform.startswith("linux"):
        Path("/proc/self/clear_refs").write_text("5")
        start = _status_bytes("VmRSS")
        peak.method = "VmHWM"
        yield peak
        peak.above_start = _status_bytes("VmHWM") - start
        return
    tracemalloc.start()
    peak.method = "tracemalloc"
    try:
        start = tracemalloc.get_traced_memory()[0]
        yield peak
        peak.above_start = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
