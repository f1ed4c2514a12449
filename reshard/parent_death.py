"""A child process that ends with its parent: the one place prctl(PR_SET_PDEATHSIG) is set."""
from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1   # <linux/prctl.h>


def kill_with_parent() -> None:
    """Ask the kernel to send the calling process SIGKILL the moment its parent ends, even when
    the parent dies of SIGKILL itself, which no handler sees (Linux prctl PR_SET_PDEATHSIG).

    Called in a child: the engine's pool workers, and the entry's launched command before exec.
    Elsewhere than Linux (no prctl in libc) it does nothing; callers that must also cover that
    case, or a parent gone before this call, check os.getppid() themselves.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
