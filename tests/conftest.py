"""Test-session settings: pytest-xdist runs two workers on our 2-core machines, so each worker's
torch uses one thread (two threads each would oversubscribe the cores and slow both)."""

import torch

torch.set_num_threads(1)
