"""Host memory settings (fastvc.model.host): freed tensor memory is reused instead of faulted in again."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from fastvc.model import host

BLOCKS, BLOCK_FLOATS = 16, 1 << 20  # 16 tensors of 4 MiB: about 16 k pages


def churn() -> None:
    """Allocate and touch 64 MiB of tensors, then free them (what a forward does with its activations)."""
    blocks = [torch.ones(BLOCK_FLOATS) for _ in range(BLOCKS)]
    del blocks


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc")
def test_freed_tensor_memory_is_reused_without_page_faults() -> None:
    assert host.keep_freed_memory()
    for _ in range(4):  # the heap settles (with glibc's defaults every later churn faults its 16 k pages again)
        churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < BLOCKS * BLOCK_FLOATS * 4 // 4096 // 10


def test_native_convolutions_match_onednn_and_restore_it() -> None:
    x, weight = torch.randn(3, 4, 500), torch.randn(4, 4, 7)
    with torch.inference_mode():
        expected = torch.nn.functional.conv1d(x, weight, padding=3)
        with host.native_convolutions():
            assert not torch.backends.mkldnn.enabled
            native = torch.nn.functional.conv1d(x, weight, padding=3)
    torch.testing.assert_close(native, expected, rtol=1e-5, atol=1e-5)
    assert torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError), host.native_convolutions():
        raise RuntimeError("a failed batch")
    assert torch.backends.mkldnn.enabled
