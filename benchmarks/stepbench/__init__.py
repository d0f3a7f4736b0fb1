"""The parts of the step-cost benchmark (``benchmarks/bench_steps.py``, ``make bench``), by concern.

- ``inputs``: profiles, the data set, the workload (the trainer's model and objective, from
  ``remd_core.training.build_model`` and ``build_objective``, and a pool of prepared batches), the
  loader's throughput.
- ``strategies``: the rows of the table (a strategy and its floor), one runner per strategy, the
  component timer (F, B, G, O, E).
- ``measure``: host reads, device synchronisations, peak memory and the epoch pass of a runner.
- ``report``: statistics, paired ratios, targets, the markdown table and the output files.
- ``end_to_end``: wall time of both stages of ``re-m3dr`` and of ``make run``.
"""
