"""The process's host memory: its resident set size, and freed heap memory given back to the OS.

A training step on the CPU allocates and frees its activations (about a gigabyte for MiniLM at
batch 32 x 384). glibc keeps freed heap memory for the next allocations, which is what makes
the next step cheap (no new pages to fault in); but every batch has its own token count, so
steps leave holes of other sizes, and the resident set creeps up step after step, well past
what a step needs (docs/memory.md has the measurements). `HeapTrimmer` gives the heap back
when that happens. Linux/glibc only; elsewhere the functions report None / do nothing.
"""

from __future__ import annotations

import ctypes
import resource
from pathlib import Path


def rss_bytes(key: str = "VmRSS") -> int | None:
    """VmRSS (resident now) or VmHWM (the high-water mark) of this process, from /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    if key == "VmHWM":
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    return None


def trim_heap() -> bool:
    """Give the free pages of glibc's heaps back to the OS (malloc_trim); False where there is
    no glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def reset_peak() -> None:
    """Reset VmHWM to the current resident size (Linux: writing 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class HeapTrimmer:
    """Call `after_step()` after each training step. The resident size after the first step
    (or the first after a trim) is what a step needs, its freed activations included; once a
    later step ends more than `slack` above it, the freed memory is given back (the next step
    then faults its pages in again, once) and the reference is taken anew. So the resident size
    stays within `slack` of one step's need, however many steps run, at the cost of one re-fault
    per creep of `slack`, not one per step."""

    def __init__(self, slack: float = 0.1):
        self.slack = slack
        self.reference: int | None = None
        self.trims = 0

    def after_step(self) -> None:
        rss = rss_bytes()
        if rss is None:
            return
        if self.reference is None:
            self.reference = rss
        elif rss > self.reference * (1 + self.slack) and trim_heap():
            self.trims += 1
            self.reference = None
