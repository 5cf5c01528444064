"""Test-wide settings: one torch thread (the suite runs on 2-core machines, often beside other
work, where torch's default thread pool mostly waits on itself)."""

import torch

torch.set_num_threads(1)
