"""Peak-memory helpers for the subprocess measurements (tests/test_big.py, tests/test_memory.py).

``peak_rss_reset()`` then ``peak_rss_bytes()`` gives the peak resident set of this process
since the reset (Linux: writing 5 to /proc/self/clear_refs resets VmHWM); where that is not
possible the peak since the process started (``resource.getrusage().ru_maxrss``).
"""
from __future__ import annotations

import resource


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmRSS")


def peak_rss_reset():
    """True when the peak could be reset (then ``peak_rss_bytes`` is the peak since now)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # kB on Linux
