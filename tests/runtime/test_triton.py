"""The Triton kernels compute the reference op and its gradients.

Without a GPU they run through Triton's interpreter, which TRITON_INTERPRET=1
selects when triton is imported. If triton was imported without it (torch
imports triton), this file reruns itself in a fresh process that sets it.
Tiny shapes only: the interpreter runs every program in Python.
"""
import itertools
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from .pconv_cases import (PAPER_GRIDS, SAT_SLACK, assert_matches_reference, grids, random_inputs,
                         relative_error)
from runtime import peripheral_conv2d
from runtime.reference import peripheral_conv2d_reference

pytest.importorskip("triton", reason="triton is not installed")
from runtime import triton_kernels  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

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


@pytest.fixture(params=["toeplitz", "rowtoeplitz", "plane", "box", "spectral", "sat"])
def form(request, monkeypatch):
    """Force the triton backend's forward form (the ratio of the chosen one unbounded, the others 0;
    the plane box, 16-bit only, and the spectral box form, fp32 only, on every padded plane size; the
    Toeplitz form by rows on any width);
    grad-weight runs the box products, or the SAT tap sums with the SAT form."""
    from runtime import op
    toeplitz_forms = ("toeplitz", "rowtoeplitz")
    ratio_forms = {"box": ("box", "spectral"), "sat": ("sat",), "toeplitz": toeplitz_forms}
    unbounded = {name: float("inf") if request.param in forms else 0.0 for name, forms in ratio_forms.items()}
    monkeypatch.setattr(op, "PLANE_BOX_PADDED_SIZES", (16, 32, 64) if request.param == "plane" else ())
    monkeypatch.setattr(op, "PLANE_BOX_MIN_FILL", 0.0)
    monkeypatch.setattr(op, "SPECTRAL_BOX_PADDED_SIZES", (16, 32, 64) if request.param == "spectral" else ())
    monkeypatch.setattr(op, "ROW_TOEPLITZ_MAX_WIDTH", 64 if request.param == "rowtoeplitz" else 0)
    monkeypatch.setattr(op, "ROW_TOEPLITZ_MAX_PADDING", float("inf"))
    monkeypatch.setattr(op, "TOEPLITZ_TAP_RATIO", {"16": unbounded["toeplitz"], "32": unbounded["toeplitz"]})
    monkeypatch.setattr(op, "BOX_CONV_TAP_RATIO", {"16": unbounded["box"], "32": unbounded["box"]})
    monkeypatch.setattr(op, "BOX_CONV_TOEPLITZ_SHARE", unbounded["box"])
    grad_weight = 0.0 if request.param == "sat" else float("inf")
    monkeypatch.setattr(op, "BOX_TAP_RATIO", {"16": grad_weight, "32": grad_weight})
    return request.param


@needs_kernels
@pytest.mark.parametrize("grid,height,width,dtype", [
    ((2, 1, 2), 4, 5, torch.float64),
    ((1, 3, 1), 3, 6, torch.float32),
    ((2, 1, 1, 1), 5, 3, torch.bfloat16),
])
def test_triton_gradients_match_the_reference(grid, height, width, dtype, form):
    if form == "plane" and dtype not in (torch.bfloat16, torch.float16):
        pytest.skip("auto runs the plane box for 16-bit inputs only")
    if form == "spectral" and dtype != torch.float32:
        pytest.skip("auto runs the spectral box form for fp32 inputs only")
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


KERNEL_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@needs_kernels
@settings(max_examples=6, deadline=None)
@given(grid=grids(max_cells=4, max_cell=3), batch=st.integers(1, 3), height=st.integers(1, 8),
       width=st.integers(1, 8), dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]),
       seed=st.integers(0, 2**16))
def test_toeplitz_kernels_match_their_torch_twins(grid, batch, height, width, dtype, seed):
    from runtime import spectral, toeplitz
    x, weight = random_inputs(batch, 2, height, width, grid, dtype, seed)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    kernel = toeplitz.lag_kernel(weight, grid, height, width, dtype)
    got = triton_kernels.toeplitz_conv_triton(x.to(DEVICE), kernel.to(DEVICE), toeplitz.lag_reach(grid, height),
                                              block_m=16, block_n=16, block_k=16).cpu()
    assert got.dtype == dtype
    assert relative_error(got, toeplitz.toeplitz_conv(x, kernel).double()) <= KERNEL_TOLERANCE[dtype]
    blocks = toeplitz.column_blocks(weight, grid, width, dtype)
    box_twin = toeplitz.box_conv(x, blocks, grid).double()
    got = triton_kernels.box_conv_triton(x.to(DEVICE), blocks.to(DEVICE), grid, block_m=16).cpu()
    assert relative_error(got, box_twin) <= KERNEL_TOLERANCE[dtype]
    tma_options = (False, True) if triton_kernels.tma_applies(x.to(DEVICE)) else (False,)
    half_options = (False, True) if dtype in (torch.bfloat16, torch.float16) else (False,)
    for row_cells, tma, half_boxes in itertools.product((0, 1, 2), tma_options, half_options):
        got = triton_kernels.plane_box_conv_triton(  # cells of at most row_cells rows go row by row,
            x.to(DEVICE), blocks.to(DEVICE), grid, row_cells=row_cells,  # wider ones by band products
            tma=tma, half_boxes=half_boxes).cpu()
        assert relative_error(got, box_twin) <= KERNEL_TOLERANCE[dtype]
    got = triton_kernels.row_toeplitz_triton(x.to(DEVICE), blocks.to(DEVICE), grid, block_m=16, rows=2).cpu()
    assert relative_error(got, box_twin) <= KERNEL_TOLERANCE[dtype]
    products = triton_kernels.box_products_triton(dy.to(DEVICE), x.to(DEVICE), grid, block_k=16).cpu()
    assert relative_error(products, toeplitz.box_products(dy, x, grid).double()) <= 1e-5
    if dtype in (torch.float32, torch.float64):
        spectra = spectral.boundary_spectra(weight, grid, height, width)
        twin = spectral.spectral_conv(x, spectra, grid).double()
        for planes in (1, 2):  # an odd batch leaves the last pair's second plane empty
            got = triton_kernels.spectral_conv_triton(
                x.to(DEVICE), spectra._replace(spectra=spectra.spectra.to(DEVICE)), grid, planes=planes).cpu()
            assert got.dtype == dtype
            assert relative_error(got, twin) <= KERNEL_TOLERANCE[dtype]


@needs_kernels
@pytest.mark.parametrize("height, width, kernel_size", [(16, 16, 13), (16, 13, 13), (20, 31, 13), (33, 40, 51),
                                                         (16, 16, 51), (40, 24, 101)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("planes", [1, 2])
@pytest.mark.parametrize("frequency_block", [16, 32, "all"])
def test_spectral_kernel_matches_its_torch_twin_on_planes_that_fill_their_padding(height, width, kernel_size, dtype,
                                                                                 planes, frequency_block):
    """A plane of H == H_PAD rows still has its H+1 prefix rows (row 0 zero) in the scratch; the
    boundary loop gives the same sums over its frequencies all at once or 16 or 32 at a time, where
    the last block runs past the stored frequencies (W=31 by 16: 24 of 32; W=40 at K=51 by 16 and by
    32: 40 of 48 and of 64) or not. The loop is unrolled by two: K=51 at H=16 merges to 11
    boundaries, an odd count; K=101 at H=40 reads rows clamped at both ends."""
    from runtime import spectral
    grid = PAPER_GRIDS[kernel_size]
    padded = spectral.padded_frequencies(grid, width)
    if frequency_block == "all":
        frequency_block = padded
    elif frequency_block > padded:
        pytest.skip(f"{padded} frequencies in all at width {width}")
    x, weight = random_inputs(3, 2, height, width, grid, dtype, seed=height + width)
    spectra = spectral.boundary_spectra(weight, grid, height, width)
    got = triton_kernels.spectral_conv_triton(x.to(DEVICE), spectra._replace(spectra=spectra.spectra.to(DEVICE)),
                                              grid, planes=planes, frequency_block=frequency_block).cpu()
    assert relative_error(got, spectral.spectral_conv(x, spectra, grid).double()) <= KERNEL_TOLERANCE[dtype]


@needs_kernels
@settings(max_examples=10, deadline=None)
@given(grid=grids(max_cells=6, max_cell=5), height=st.integers(1, 40), width=st.integers(1, 40),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
@example(grid=PAPER_GRIDS[101], height=56, width=56, dtype=torch.float32, seed=0)  # 17 cells, boundaries merged
def test_boundary_spectra_kernel_gives_the_torch_spectra(grid, height, width, dtype, seed):
    """Ŝ from the Triton kernel (rows @ w_θ[c] @ cells in fp64, rounded once) is the torch form's
    (w_θ @ spectrum_map in fp64, rounded once) to the rounding of fp64 sums taken in another order."""
    from runtime import spectral
    weight = random_inputs(1, 3, 1, 1, grid, dtype, seed)[1]
    expected = spectral.boundary_spectra(weight, grid, height, width)
    got = triton_kernels.boundary_spectra_triton(weight.to(DEVICE), grid, height, width)
    assert got.offsets == expected.offsets
    assert got.spectra.dtype == expected.spectra.dtype and got.spectra.shape == expected.spectra.shape
    scale = expected.spectra.abs().max().item()
    torch.testing.assert_close(got.spectra.cpu(), expected.spectra, rtol=torch.finfo(dtype).eps,
                               atol=16 * torch.finfo(torch.float64).eps * scale)


@needs_kernels
@settings(max_examples=6, deadline=None)
@given(grid=grids(max_cells=5, max_cell=4), height=st.integers(1, 12), width=st.sampled_from([8, 16]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), seed=st.integers(0, 2**16))
@example(grid=(3, 2, 1, 2, 3), height=12, width=16, dtype=torch.bfloat16, seed=0)  # centre and mirror pairs
def test_plane_box_moves_its_tiles_by_tma_with_the_same_result(grid, height, width, dtype, seed):
    """The TMA kernel reads shifted planes with rows outside the image as zeros, as the masked loads do,
    and reuses the plane on chip for the centre and one band for each mirror pair of wide cells."""
    from runtime import toeplitz
    x, weight = random_inputs(2, 3, height, width, grid, dtype, seed)
    x = x.to(DEVICE)
    assert triton_kernels.tma_applies(x) == (DEVICE == "cpu" or torch.cuda.get_device_capability()[0] >= 9)
    blocks = toeplitz.column_blocks(weight, grid, width, dtype).to(DEVICE)
    half_options = (False, True) if dtype in (torch.bfloat16, torch.float16) else (False,)
    for row_cells, half_boxes in itertools.product((0, 1, 2), half_options):
        by_tma, by_loads = (triton_kernels.plane_box_conv_triton(x, blocks, grid, row_cells=row_cells, tma=tma,
                                                                 half_boxes=half_boxes).cpu() for tma in (True, False))
        assert torch.equal(by_tma, by_loads)  # the same products in the same order


def test_plane_box_work_list_puts_the_centre_first_and_mirror_images_in_pairs():
    """PeLK's K=101 grid at stage 1: cells of lags [lo, hi) and [1 - hi, 1 - lo) pair up (V_mirror = V_aᵀ)."""
    from runtime.toeplitz import cell_lag_ranges
    grid = (17, 16, 8, 4, 2, 1, 1, 1, 1, 1, 1, 1, 2, 4, 8, 16, 17)
    work = triton_kernels._plane_cells(grid, 56, 1, torch.device("cpu"))
    row_lags, wide = work.row_lags.view(-1, 2).tolist(), work.wide.tolist()
    assert work.centre == 1 and row_lags[0] == [8, 0] and sorted(lag for _, lag in row_lags) == list(range(-3, 4))
    assert work.mirror_pairs == 5 and sorted(wide) == [0, 1, 2, 3, 4, 12, 13, 14, 15, 16]
    ranges = cell_lag_ranges(grid)
    for cell, mirror in zip(wide[0::2], wide[1::2]):
        assert ranges[mirror] == (1 - ranges[cell][1], 1 - ranges[cell][0])
    plain = triton_kernels._plane_cells(grid, 56, 1, torch.device("cpu"), reuse_tiles=False)
    assert (plain.centre, plain.mirror_pairs) == (0, 0) and sorted(plain.wide.tolist()) == sorted(wide)


@needs_kernels
@settings(max_examples=6, deadline=None)
@given(grid=grids(max_cells=5, max_cell=4), batch=st.integers(1, 3), height=st.integers(1, 12),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16))
@example(grid=(3, 1, 3), batch=3, height=5, dtype=torch.bfloat16, seed=0)  # an odd batch: a pair with no image 3
def test_plane_box_by_image_pairs_computes_one_image_at_a_time(grid, batch, height, dtype, seed):
    from runtime import toeplitz
    x, weight = random_inputs(batch, 2, height, 16, grid, dtype, seed)
    x, blocks = x.to(DEVICE), toeplitz.column_blocks(weight, grid, 16, dtype).to(DEVICE)
    pairs, singles = (triton_kernels.plane_box_conv_triton(x, blocks, grid, tma=True, images_per_program=images)
                      for images in (2, 1))
    assert torch.equal(pairs, singles)  # the same products in the same order


@needs_kernels
def test_fp32_products_take_tf32_only_where_torch_allows_it_for_fp32_matmuls():
    x, weight = random_inputs(2, 2, 6, 6, (3, 1, 3), torch.float32, 0)
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert triton_kernels._dot_precision(torch.float32) == "tf32"
        expected = peripheral_conv2d_reference(x.double(), weight.double(), (3, 1, 3))
        assert relative_error(triton_conv(x, weight, (3, 1, 3)), expected) <= 2e-3  # TF32's 11 bits
    finally:
        torch.set_float32_matmul_precision(previous)
    assert triton_kernels._dot_precision(torch.float32) == "tf32x3"  # the default, "highest"
    assert triton_kernels._dot_precision(torch.bfloat16) == "tf32"  # ignored for 16-bit inputs


@triton.jit
def _tf32_split_kernel(values_ptr, hi_ptr, lo_ptr, N: tl.constexpr):
    index = tl.arange(0, N)
    hi, lo = triton_kernels._tf32_split(tl.load(values_ptr + index))
    tl.store(hi_ptr + index, hi)
    tl.store(lo_ptr + index, lo)


@needs_kernels
@settings(max_examples=20, deadline=None)
@given(values=st.lists(st.floats(min_value=-2.0 ** 126, max_value=2.0 ** 126, width=32), min_size=16, max_size=16))
@example(values=[1 + 2**-11, 1 + 3 * 2**-11, -(1 + 2**-11), 2**-140, 3 * 2**-137, 0.0, -0.0, 2.0**126] * 2)  # ties
def test_tf32_split_rounds_to_nearest_ties_away_and_keeps_the_rest_exactly(values):
    """The fp32 products' operand split (the three-TF32 scheme of tl.dot's tf32x3, whose cvt.rna it
    matches): hi has TF32's 10 mantissa bits, rounded to nearest with ties away from zero, and
    hi + lo is the value exactly."""
    x = torch.tensor(values, dtype=torch.float32, device=DEVICE)
    hi, lo = torch.empty_like(x), torch.empty_like(x)
    _tf32_split_kernel[(1,)](x, hi, lo, N=16)
    hi, lo, exact = hi.cpu().double(), lo.cpu().double(), x.cpu().double()
    assert ((hi.float().view(torch.int32) & 0x1FFF) == 0).all()
    assert torch.equal(hi + lo, exact)
    exponent = torch.floor(torch.log2(exact.abs().clamp_min(2.0 ** -149))).clamp_min(-126)
    ulp = torch.exp2(exponent - 10)
    rounded = torch.sign(exact) * torch.floor(exact.abs() / ulp + 0.5) * ulp
    assert torch.equal(hi, rounded)


@triton.jit
def _products_kernel(a_ptr, b_ptr, acc_ptr, ours_ptr, theirs_ptr, N: tl.constexpr, A_IS_TF32: tl.constexpr):
    tile = tl.arange(0, N)[:, None] * N + tl.arange(0, N)[None, :]
    a, b, acc = tl.load(a_ptr + tile), tl.load(b_ptr + tile), tl.load(acc_ptr + tile)
    tl.store(ours_ptr + tile, triton_kernels._dot_step(acc, a, b, "tf32x3", False, A_IS_TF32))
    tl.store(theirs_ptr + tile, tl.dot(a, b, acc, input_precision="tf32x3"))


@needs_kernels
@pytest.mark.parametrize("a_is_tf32", [False, True])
def test_fp32_products_split_their_operands_as_tl_dot_tf32x3_does(a_is_tf32):
    """_dot_step's own split gives tl.dot's tf32x3 numbers: bit for bit on the GPU (same products, same
    order), and to fp32 rounding under the interpreter (which multiplies in fp32 without TF32)."""
    generator = torch.Generator().manual_seed(3)
    a, b, acc = (torch.randn(32, 32, generator=generator) * 10.0 ** torch.randint(-3, 4, (32, 32), generator=generator)
                 for _ in range(3))
    if a_is_tf32:
        a = (torch.rand(32, 32, generator=generator) < 0.5).float()
    a, b, acc = a.to(DEVICE), b.to(DEVICE), acc.to(DEVICE)
    ours, theirs = torch.empty_like(acc), torch.empty_like(acc)
    _products_kernel[(1,)](a, b, acc, ours, theirs, N=32, A_IS_TF32=a_is_tf32)
    if DEVICE == "cuda":
        assert torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * float((a.abs() @ b.abs()).max()))


def test_tma_needs_16_byte_rows():
    assert not triton_kernels.tma_applies(torch.zeros(1, 1, 28, 28, dtype=torch.bfloat16))
    assert not triton_kernels.tma_applies(torch.zeros(1, 1, 4, 6, dtype=torch.float32))


@needs_kernels
@settings(max_examples=8, deadline=None)
@given(grid=grids(max_cells=5, max_cell=4), width=st.integers(1, 40),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
       weight_dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**16))
def test_column_blocks_kernel_equals_its_torch_twin_bit_for_bit(grid, width, dtype, weight_dtype, seed):
    from runtime import toeplitz
    _, weight = random_inputs(1, 3, 1, width, grid, weight_dtype, seed)
    got = triton_kernels.column_blocks_triton(weight.to(DEVICE), grid, width, dtype).cpu()
    expected = toeplitz.column_blocks(weight, grid, width, dtype)
    assert got.dtype == dtype and got.shape == expected.shape
    assert torch.equal(got, expected)  # a gather and a cast: nothing to round differently


@needs_kernels
@settings(max_examples=8, deadline=None)
@given(grid=grids(max_cells=5, max_cell=4), width=st.integers(1, 20), weight_dtype=st.sampled_from(
       [torch.float32, torch.bfloat16, torch.float64]), weight_scale=st.integers(-100, 100),
       seed=st.integers(0, 2**16))
@example(grid=(1, 1, 1), width=4, weight_dtype=torch.float32, weight_scale=0, seed=0)
def test_plane_blocks_kernel_scales_its_fp16_copy_as_its_torch_twin(grid, width, weight_dtype, weight_scale, seed):
    """One kernel writes R in bf16 and R·2^e_c in fp16, e_c putting channel c's largest weight in [2^14, 2^15)."""
    from runtime import toeplitz
    _, weight = random_inputs(1, 3, 1, width, grid, torch.float64, seed)
    weight = (weight * 2.0 ** weight_scale).to(weight_dtype)
    weight[1] = 0  # an all-zero channel scales by 2^126 and stays zero
    got = triton_kernels.plane_blocks_triton(weight.to(DEVICE), grid, width, torch.bfloat16, row_cells=None)
    blocks = toeplitz.column_blocks(weight, grid, width, torch.bfloat16)
    exponents = toeplitz.half_block_exponents(weight.to(torch.bfloat16))
    assert torch.equal(got.blocks.cpu(), blocks)
    assert torch.equal(got.exponents.cpu(), exponents) and exponents[1] == 126
    assert torch.equal(got.half.cpu(), toeplitz.half_blocks(blocks, exponents))
    for row_cells in (1, 2):  # as the plane box reads them: R for the cells it takes row by row, fp16 for the rest
        narrow = torch.tensor(grid) <= row_cells
        partial = triton_kernels.plane_blocks_triton(weight.to(DEVICE), grid, width, torch.bfloat16, row_cells)
        assert partial.row_cells == row_cells and torch.equal(partial.exponents.cpu(), exponents)
        assert torch.equal(partial.blocks.cpu()[:, narrow], blocks[:, narrow])
        assert torch.equal(partial.half.cpu()[:, ~narrow], got.half.cpu()[:, ~narrow])
    largest = weight.to(torch.bfloat16).float().abs().flatten(1).amax(1) * 2.0 ** exponents
    assert ((largest < 2**15) & ((largest >= 2**14) | (largest == 0) | (exponents.abs() == 126))).all()


@needs_kernels
@settings(max_examples=8, deadline=None)
@given(grid=grids(max_cells=5, max_cell=4), height=st.integers(1, 12), width=st.sampled_from([8, 16]),
       input_scale=st.integers(-60, 60), weight_scale=st.integers(-60, 60), seed=st.integers(0, 2**16))
@example(grid=(8, 1, 8), height=12, width=16, input_scale=14, weight_scale=0, seed=0)  # boxes past fp16's 65504
@example(grid=(8, 1, 8), height=12, width=16, input_scale=-30, weight_scale=-30, seed=0)  # below its normals
def test_plane_box_in_fp16_keeps_bf16_accuracy_at_any_scale(grid, height, width, input_scale, weight_scale, seed):
    """Box sums in fp16 are scaled into its range per plane, R per channel: bf16's error bound holds at
    magnitudes where unscaled fp16 would overflow or lose its precision."""
    x, weight = random_inputs(2, 2, height, width, grid, torch.float64, seed)
    x, weight = (x * 2.0 ** input_scale).to(torch.bfloat16), (weight * 2.0 ** weight_scale).to(torch.bfloat16)
    from runtime import toeplitz
    blocks = triton_kernels.plane_blocks_triton(weight.to(DEVICE), grid, width, torch.bfloat16)
    for tma in (False, True):
        y = triton_kernels.plane_box_conv_triton(x.to(DEVICE), blocks, grid, tma=tma, half_boxes=True).cpu()
        assert torch.isfinite(y).all()
        assert_matches_reference(y, x, weight, grid)
    assert toeplitz.HALF_SCALE_BITS + 1 < 16  # scaled boxes stay below 2^15 < 65504


@needs_kernels
def test_plane_box_refuses_blocks_written_for_another_split_of_its_cells():
    """Blocks written for row_cells=1 hold no R for two-row cells: a plane box taking them row by row,
    or every wide cell through R (no half boxes), would read blocks never written."""
    x, weight = random_inputs(1, 2, 8, 8, (2, 1, 2), torch.bfloat16, 0)
    blocks = triton_kernels.plane_blocks_triton(weight.to(DEVICE), (2, 1, 2), 8, torch.bfloat16, row_cells=1)
    for options in ({"row_cells": 2}, {"half_boxes": False}):
        with pytest.raises(ValueError, match="row_cells|half boxes"):
            triton_kernels.plane_box_conv_triton(x.to(DEVICE), blocks, (2, 1, 2), **options)


@needs_kernels
@settings(max_examples=6, deadline=None)
@given(height=st.integers(1, 80), width=st.integers(1, 9),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float64]), seed=st.integers(0, 2**16))
@example(height=70, width=3, dtype=torch.float32, seed=0)  # rows in two chunks: the carry between them
def test_column_prefix_kernel_matches_its_torch_twin(height, width, dtype, seed):
    from runtime import toeplitz
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(seed)).to(dtype)
    got = triton_kernels.column_prefix_triton(x.to(DEVICE)).cpu()
    expected = toeplitz.column_prefix(x)
    assert got.dtype == expected.dtype and got.shape == (2, 3, height + 1, width)
    assert relative_error(got, expected.double()) <= {torch.float64: 1e-12}.get(dtype, 1e-6)


@needs_kernels
@settings(max_examples=6, deadline=None)
@given(grid=grids(max_cells=4, max_cell=3), height=st.integers(1, 8), width=st.integers(1, 8),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), col_chunk=st.sampled_from([1, 2, 4, 8]),
       seed=st.integers(0, 2**16))
def test_sat_kernels_match_their_torch_twins(grid, height, width, dtype, col_chunk, seed):
    from runtime import sat
    x, weight = random_inputs(2, 2, height, width, grid, dtype, seed)
    dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    rows, cols, linear = sat.tap_map(grid, height, width, torch.device("cpu"))
    coeffs = (weight.reshape(2, -1).float() @ linear.float().mT).view(2, len(rows), len(cols))
    got = triton_kernels.sat_taps_triton(x.to(DEVICE), rows, cols, coeffs.to(DEVICE), col_chunk=col_chunk).cpu()
    assert relative_error(got, sat.sat_taps(x, rows, cols, coeffs).double()) <= KERNEL_TOLERANCE[dtype]
    sums = triton_kernels.sat_tap_sums_triton(dy.to(DEVICE), x.to(DEVICE), rows, cols).cpu()
    assert relative_error(sums, sat.sat_tap_sums(dy, x, rows, cols).double()) <= 1e-5
