"""A warm standby loads torch at idle CPU priority, so it never slows the running round.

The demo keeps a standby process for each client planned to vanish (processes.py): it imports
torch, loads its shard and warms the kernels while the other clients are in a round. On two
cores that start-up competed with the round and made rounds with vanishers several times
slower than rounds without (issue 25's figure measures the appliance, not Python's imports).
Under ``SCHED_IDLE`` the standby runs only on otherwise idle CPU; when it takes over it goes
back to ``SCHED_OTHER`` (every thread of the process, as the policy is per thread).

Leaving ``SCHED_IDLE`` needs ``CAP_SYS_NICE`` or an ``RLIMIT_NICE`` that allows nice 0
(sched(7)), so the standby enters it only when it can leave it: a client must never be stuck
at idle priority behind an unrelated busy process. Elsewhere (or off Linux) nothing changes.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["enter_idle", "leave_idle"]

_TASKS = Path("/proc/self/task")


def _can_leave_idle() -> bool:
    if not hasattr(os, "SCHED_IDLE") or not _TASKS.is_dir():
        return False
    if os.geteuid() == 0:
        return True
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    return soft == resource.RLIM_INFINITY or soft >= 20  # nice 0 = 20 - rlimit allows it


def _set_policy(policy: int) -> None:
    for task in _TASKS.iterdir():  # threads started so far (numba's, torch's) included
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setscheduler(int(task.name), policy, os.sched_param(0))


def enter_idle() -> bool:
    """Run this process at idle priority if it can come back; True when it did."""
    if not _can_leave_idle():
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:
        return False
    return True


def leave_idle() -> None:
    """Back to normal priority, every thread (after :func:`enter_idle` returned True)."""
    _set_policy(os.SCHED_OTHER)
