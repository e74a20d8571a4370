"""Memory claims, checked: the largest tensor any aten op returns inside a block (forward and backward).

    with LargestAllocation() as t:
        loss = linear_cross_entropy(e, c, targets); loss.backward()
    t.largest        # elements of the largest storage returned by any op (the N×V question)
    t.largest_bytes  # the same in bytes

Used by the tests (the reference CE kernel, the Z-loss and EMO never form an N×V tensor) and the benches.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LargestAllocation(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0
        self.largest_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in tree_leaves(out):
            if isinstance(x, torch.Tensor):
                nbytes = x.untyped_storage().nbytes()
                self.largest_bytes = max(self.largest_bytes, nbytes)
                self.largest = max(self.largest, nbytes // x.element_size())
        return out
