"""The demo's warm standby waits at idle CPU priority and takes over at normal priority
(client_shim/demo/cpu_priority.py), every thread included: a standby must never slow the
running round, and a client that took over must never stay behind other processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, os, threading, time
from sealagg.client_shim.demo import cpu_priority

entered = cpu_priority.enter_idle()
stop = threading.Event()
worker = threading.Thread(target=stop.wait)  # started while idle: it inherits the policy
worker.start()
idle = [os.sched_getscheduler(0), os.sched_getscheduler(worker.native_id)]
cpu_priority.leave_idle()
normal = [os.sched_getscheduler(0), os.sched_getscheduler(worker.native_id)]
stop.set()
print(json.dumps({"entered": entered, "idle": idle, "normal": normal}))
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduling policies")
def test_a_standby_waits_idle_and_takes_over_at_normal_priority():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(out.stdout)
    if not result["entered"]:  # no CAP_SYS_NICE and a low RLIMIT_NICE: it must not enter
        assert result["idle"] == [os.SCHED_OTHER] * 2
        return
    assert result["idle"] == [os.SCHED_IDLE] * 2
    assert result["normal"] == [os.SCHED_OTHER] * 2
