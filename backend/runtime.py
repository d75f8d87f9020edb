"""Process-wide settings that make the CPU path fast."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_MAX = -4  # glibc mallopt parameter


def tune_allocator() -> None:
    """Serve large allocations from the heap instead of fresh mmap'd pages. On these VMs every
    >32 MB tensor otherwise comes back as new pages whose faults are very slow (the figure:
    docs/quality.md, "Figures behind design choices"). Linux/glibc only;
    a no-op elsewhere. Safe to call more than once."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_MAX, 0)
    except (OSError, AttributeError):
        pass  # not glibc (e.g. musl): keep the default allocator
