"""Measured memory of a training forward/backward on any device, CUDA or not.

CPU has no ``max_memory_allocated``; :class:`LiveBytes` counts it instead: a dispatch mode
sees every tensor an operator returns, adds its storage's size the first time it sees that
storage, and a finalizer on the storage (PyTorch keeps one Python object per storage)
subtracts it when the storage dies. Tensors that existed before (weights, inputs) are not
counted; in-place updates allocate nothing. This is what the plan's activation figures are
checked against (``tests/plan``), with the same shapes on CPU.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Bytes of storages allocated by operators inside the mode and still alive; and peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self._seen.discard(key)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage: nothing was allocated
        inputs = {
            id(t.untyped_storage())
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.device.type != "meta"
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = id(st)
            if key in self._seen or key in inputs or st.nbytes() == 0:
                continue
            self._seen.add(key)
            n = st.nbytes()
            self.live += n
            weakref.finalize(st, self._free, key, n)
        self.peak = max(self.peak, self.live)
        return out


def measure_step(model, input_ids: torch.Tensor, labels: torch.Tensor, loss_fn=None) -> dict:
    """Bytes alive after the forward (what backward keeps), and the peak over forward+backward.

    ``loss_fn(model, input_ids, labels) -> loss``; default: the model's fused loss
    (:class:`phi_ray.model.phi.PhiForTraining`).
    """
    loss_fn = loss_fn or (lambda m, x, y: m(input_ids=x, labels=y))
    with LiveBytes() as mem:
        loss = loss_fn(model, input_ids, labels)
        after_forward = mem.live
        peak_forward = mem.peak
        loss.backward()
    return {
        "saved": after_forward,
        "peak_forward": peak_forward,
        "peak": mem.peak,
        "loss": float(loss.detach()),
    }
