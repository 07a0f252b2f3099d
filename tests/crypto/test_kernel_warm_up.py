"""``crypto.encoding.warm_up`` loads the kernels of a masked round before the first round.

Without it each client process paid about 0.4 s of kernel loading inside its first round; ten
clients on two cores made the first loopback round 2.2-2.8 s against 0.4 s for the others
(benchmarks/RESULTS.md). Checked in a fresh interpreter, where nothing is loaded yet.
"""

import json
import subprocess
import sys

PROBE = """
import json
from sealagg.kernels import _modular, _quantize
def loaded():
    return {
        "quantize": sorted(str(s[0]) for s in _quantize._quantize_kernel.signatures),
        "dequantize": len(_quantize._dequantize_kernel.signatures),
    }
before = loaded()
from sealagg.crypto.encoding import warm_up
seconds = warm_up()
print(json.dumps({"before": before, "after": loaded(), "seconds": seconds}))
"""


def test_warm_up_loads_quantize_for_both_float_widths_and_dequantize() -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-c", PROBE], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["before"] == {"quantize": [], "dequantize": 0}
    widths = result["after"]["quantize"]
    assert any("float32" in s for s in widths) and any("float64" in s for s in widths)
    assert result["after"]["dequantize"] >= 1
    assert result["seconds"] >= 0
