"""Kernel tests: without a GPU, Triton kernels run under the Triton interpreter on CPU tensors.

`TRITON_INTERPRET` is read when a kernel is decorated (`@triton.jit`), so it is set here, before any test
module imports kernels.cross_entropy.triton. It stays set for the rest of the session (and the processes
it starts); the CPU runner uses the reference kernels, which it does not affect.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
