"""The measured choice among ways to solve a float32 matrix on a device (CUDA's path, run here on the CPU)."""
from __future__ import annotations

import torch

from dse_monitor.functional import backend
from dse_monitor.functional.spectrum import _device_eigvalsh, _device_proxy


def test_every_way_gives_the_spectrum_and_the_measured_choice_is_kept_per_kind():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 200, 200, generator=g)
    a = a @ a.transpose(-1, -2) / 200
    ref = torch.linalg.eigvalsh(a.double())
    for how in ("torch", "torch64"):
        vals = _device_eigvalsh(a, how)
        assert vals.dtype == torch.float32 and vals.shape == (3, 200)
        assert torch.allclose(vals.double(), ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    backend.reset()
    try:
        key = ("eigvalsh", 200 .bit_length(), "cpu", torch.float32, 3)  # by the device's model, not its index
        first = backend.choose_on_device("eigvalsh", 200, (torch.float32, 3), lambda m: _device_proxy(a, m),
                                         ("torch", "torch64"), torch.device("cpu"))
        assert first in ("torch", "torch64") and backend.choices()[key] == first
        # the same kind later: no new measurement (a proxy that fails would show one)
        assert backend.choose_on_device("eigvalsh", 220, (torch.float32, 3), None, ("torch", "torch64"),
                                        torch.device("cpu")) == first
        assert backend.choose_on_device("eigvalsh", 200, (), None, ("torch",), torch.device("cpu")) == "torch"
    finally:
        backend.reset()
