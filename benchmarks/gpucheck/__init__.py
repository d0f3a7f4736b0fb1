"""The parts of ``make gpu-check`` (``benchmarks/gpu_check.py``): the first minutes on a lent GPU machine.

- ``plan``: the sizes of a check (``Plan``: the paper's scale, or ``DRY_RUN``'s tiny one for CPU tests),
  the parts in order and their time budgets.
- ``environment``: why a machine cannot run the check (no torch, a CPU-only torch, no visible GPU), the
  packages the GPU machine's Python lacks (installed from carried wheels), what the device is.
- ``budget``: each part in its own process group, stopped when it overruns its budget.
- ``cuda_tests``: part (a), the tests marked ``gpu`` or skipped with "needs CUDA".
- ``data``: synthetic eyes at the check's scale written as a manifest of ``.npy`` files and decoded into
  the store, so that part (c) trains through the streamed loader (``data.streaming``).
- ``bench``: part (b), the step benchmark (``benchmarks/stepbench``) on those eyes.
- ``monitor``: step times from a global optimizer hook (CUDA events and host clocks) and the GPU's busy
  share sampled from NVML in a thread.
- ``stages``: part (c), both stages of ``re-m3dr`` at the paper's settings.
- ``report``: the one report, JSON and Markdown.
"""
