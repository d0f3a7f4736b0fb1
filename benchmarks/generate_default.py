"""Time the generation of the default synthetic data set (no cache), best of a few repeats."""

import time

from remd_core.data import loader_config
from remd_core.data.synthetic import generate


def main(repeats: int = 3) -> None:
    config = loader_config("synthetic-stage2")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        arrays = generate(config, progress=False)
        times.append(time.perf_counter() - start)
    print(f"synthetic-stage2: {config.n_eyes} eyes, fundus {arrays['fundus'].shape[1:]}, OCT {arrays['oct'].shape[1:]}")
    print(f"generation seconds over {repeats} runs: min {min(times):.2f}, max {max(times):.2f} (target < 20 s)")


if __name__ == "__main__":
    main()
