"""Freed memory goes back to the system during a release build (glibc's malloc).

glibc raises its mmap threshold to the size of the largest block freed so far (up to 32 MiB). After the
first 16 MiB input block is freed, blocks of that size (input reads and their numpy temporaries) come from
the heap of the thread that allocates them instead; freed, they stay in the process, pinned between
long-lived objects, and the resident size grows with the build and with every thread (1.0-1.2 GiB at the
full v0.5 size instead of 0.7). Setting the threshold turns that adjustment off: such blocks keep their own
mappings, returned to the system when freed. The cost is page faults on every fresh block (more CPU the
lower the threshold: 8 MiB leaves the leak guard's 4 MiB chunks on the heaps, where they are reused).
"""

from __future__ import annotations

import ctypes
import sys


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 8 << 20  # bytes: the 16 MiB input blocks and their numpy temporaries are mapped on their own


def fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at `MMAP_THRESHOLD` for this process; False where malloc is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
