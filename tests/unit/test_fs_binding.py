"""pyfuse3 loads without trio, and trio is still the real one when asked for afterwards."""

import subprocess
import sys


def test_pyfuse3_loads_without_trio_and_trio_stays_importable() -> None:
    code = ("import sys; from stargz.fs.binding import pyfuse3; "
            "print('trio' in sys.modules, pyfuse3.trio.__name__); "
            "import trio; print(callable(trio.run))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "pyfuse3.asyncio", "True"]
