"""nbval runs the committed notebooks at the ``smoke`` profile, the one their outputs come from,
on one thread (as ``make notebooks`` made them), writing run products to a temporary folder."""

import atexit
import os
import shutil
import tempfile

_outputs = tempfile.mkdtemp(prefix="remd-nbval-")
atexit.register(shutil.rmtree, _outputs, ignore_errors=True)
os.environ.update(REMD_PROFILE="smoke", REMD_OUTPUTS=_outputs)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # any count gives the same checked outputs (float64): `make test-kernels`
