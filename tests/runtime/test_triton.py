"""The Triton kernels compute the reference op and its gradients.

Without a GPU they run through Triton's interpreter, which TRITON_INTERPRET=1
selects when triton is imported. If triton was imported without it (torch
imports triton), this file reruns itself in a fresh process that sets it.
Tiny shapes only: the interpreter runs every program in Python.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .pconv_cases import (PAPER_GRIDS, SAT_SLACK, assert_matches_reference, grids, random_inputs,
                         relative_error)
from runtime import peripheral_conv2d
from runtime.reference import peripheral_conv2d_reference

pytest.importorskip("triton", reason="triton is not installed")
from runtime import triton_kernels  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KERNELS_RUN_HERE = DEVICE == "cuda" or triton_kernels.INTERPRETED
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.mark.skipif(KERNELS_RUN_HERE, reason="the kernels run in this process")
def test_kernels_in_a_fresh_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


needs_kernels = pytest.mark.skipif(not KERNELS_RUN_HERE,
                                   reason="triton imported without TRITON_INTERPRET=1: see the subprocess test")


def triton_conv_on_device(x, weight, grid):
    return peripheral_conv2d(x, weight, grid, backend="triton")


def triton_conv(x, weight, grid):
    return triton_conv_on_device(x.to(DEVICE), weight.to(DEVICE), grid).cpu()


@needs_kernels
@settings(max_examples=8, deadline=None)
@given(grid=grids(max_cells=4, max_cell=3), channels=st.integers(1, 3), height=st.integers(1, 7),
       width=st.integers(1, 7), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
       seed=st.integers(0, 2**16))
def test_triton_matches_the_reference(grid, channels, height, width, dtype, seed):
    x, weight = random_inputs(2, channels, height, width, grid, dtype, seed)
    assert_matches_reference(triton_conv(x, weight, grid), x, weight, grid)


@needs_kernels
def test_triton_is_exact_in_fp64_on_a_paper_grid_larger_than_the_image():
    grid = PAPER_GRIDS[13]
    x, weight = random_inputs(1, 2, 5, 6, grid, torch.float64, seed=4)
    torch.testing.assert_close(triton_conv(x, weight, grid), peripheral_conv2d_reference(x, weight, grid))


@needs_kernels
@pytest.mark.parametrize("grid,height,width,dtype", [
    ((2, 1, 2), 4, 5, torch.float64),
    ((1, 3, 1), 3, 6, torch.float32),
    ((2, 1, 1, 1), 5, 3, torch.bfloat16),
])
def test_triton_gradients_match_the_reference(grid, height, width, dtype):
    x, weight = random_inputs(2, 3, height, width, grid, dtype, seed=5)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(dtype)
    grads = {}
    for name, run, cast in (("triton", triton_conv_on_device, lambda t: t.to(DEVICE)),
                            ("fp64", peripheral_conv2d_reference, lambda t: t.double()),
                            ("torch", peripheral_conv2d_reference, lambda t: t)):
        a, w = (cast(t).detach().clone().requires_grad_() for t in (x, weight))
        run(a, w, grid).backward(cast(dy))
        grads[name] = a.grad.cpu(), w.grad.cpu()
    for got, ref, plain in zip(grads["triton"], grads["fp64"], grads["torch"]):
        assert got.dtype == dtype
        assert relative_error(got, ref) <= 2 * relative_error(plain, ref) + SAT_SLACK[dtype]


@needs_kernels
def test_triton_handles_non_contiguous_channel_slices():
    grid = (2, 1, 2)
    x, weight = random_inputs(2, 4, 4, 4, grid, torch.float32, seed=7)
    part = x[:, 1:3]  # what a partial peripheral mixer passes in
    assert not part.is_contiguous()
    assert_matches_reference(triton_conv(part, weight[1:3], grid), part.contiguous(), weight[1:3], grid)
