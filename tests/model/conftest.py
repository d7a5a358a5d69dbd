"""The model tests' fixture for FlashAttention's varlen path on the CPU."""

from __future__ import annotations

import pytest
import torch

from attention_reference import CpuFlash
from bertforge.model import bert as bert_module


@pytest.fixture
def cpu_flash(monkeypatch):
    """The CPU counts as a device with FlashAttention, and the op runs attention_reference's
    kernels (the CUDA one cannot run here)."""
    flash = CpuFlash()
    lib = torch.library.Library("aten", "IMPL")
    lib.impl("_flash_attention_forward", flash.forward, "CPU")
    lib.impl("_flash_attention_backward", flash.backward, "CPU")
    monkeypatch.setattr(bert_module, "_flash_varlen_on", lambda device: device.type == "cpu")
    yield flash
    lib._destroy()
