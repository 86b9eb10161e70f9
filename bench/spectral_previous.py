"""The spectral box kernel as of commit 2aca0b3 (prefix by tl.cumsum, masked gathers from a scratch of
H rows, complex products as mul/sub/add), kept only to time it side by side with runtime's current
kernel (bench_forms.py form ``spectralold``). Delete once the comparison is recorded."""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from runtime import spectral
from runtime.toeplitz import padded_width
from runtime.triton_kernels import _dot_precision, _dot_step, _offsets_tensor


@triton.jit
def _spectral_box_kernel_previous(x_ptr, spectra_ptr, offsets_ptr, forward_ptr, inverse_ptr, scratch_ptr,
                                  y_ptr, C, BOUNDARIES, H: tl.constexpr, W: tl.constexpr, PRECISION: tl.constexpr,
                                  H_PAD: tl.constexpr, W_PAD: tl.constexpr, F_PAD: tl.constexpr):
    """y[n, c] = (Σ_j Ŝ_j[c] ⊙ (P @ F)[clamp(h + p_j, 0, H)]) @ G (the spectral box form,
    spectral.spectral_conv), fp32 or fp64.

    Program = one (n, c) plane, held on chip (H_PAD x W_PAD). Its inclusive column prefix times the
    forward real DFT F (forward_ptr: cos, then -sin, each (W_PAD, F_PAD)) gives the prefix spectrum,
    parked in the scratch (H rows of real then imaginary F_PAD, prefix rows 1..H) and read back at the
    BOUNDARIES row offsets p_j (offsets_ptr) for the complex products with Ŝ (C, BOUNDARIES, 2, F_PAD
    at spectra_ptr); prefix row 0 is zero. The result times the inverse (inverse_ptr: cos, then -sin,
    each (F_PAD, W_PAD)) is y.
    """
    n, c = tl.program_id(0), tl.program_id(1)
    plane = n.to(tl.int64) * C + c
    u = tl.arange(0, H_PAD)
    w = tl.arange(0, W_PAD)
    f = tl.arange(0, F_PAD)
    inside = (u < H)[:, None] & (w < W)[None, :]
    accumulate = tl.float64 if PRECISION == "ieee" else tl.float32
    x = tl.load(x_ptr + plane * (H * W) + u[:, None] * W + w[None, :], mask=inside, other=0.0).to(accumulate)
    prefix = tl.cumsum(x, axis=0)
    forward = forward_ptr + w[:, None] * F_PAD + f[None, :]
    zeros = tl.zeros((H_PAD, F_PAD), dtype=accumulate)
    real = _dot_step(zeros, prefix, tl.load(forward), PRECISION, False)
    imag = _dot_step(zeros, prefix, tl.load(forward + W_PAD * F_PAD), PRECISION, False)
    scratch = scratch_ptr + plane * (H * 2 * F_PAD) + f[None, :]
    tl.store(scratch + (u * (2 * F_PAD))[:, None], real, mask=(u < H)[:, None])
    tl.store(scratch + (u * (2 * F_PAD) + F_PAD)[:, None], imag, mask=(u < H)[:, None])
    tl.debug_barrier()
    out_real, out_imag = zeros, zeros
    spectra = spectra_ptr + c.to(tl.int64) * (BOUNDARIES * 2 * F_PAD) + f
    for index in range(BOUNDARIES):
        source = tl.minimum(tl.maximum(u + tl.load(offsets_ptr + index), 0), H)
        rows = scratch + ((source - 1) * (2 * F_PAD))[:, None]
        reads = ((source > 0) & (u < H))[:, None]
        p_real = tl.load(rows, mask=reads, other=0.0)
        p_imag = tl.load(rows + F_PAD, mask=reads, other=0.0)
        s_real = tl.load(spectra + index * (2 * F_PAD))[None, :]
        s_imag = tl.load(spectra + index * (2 * F_PAD) + F_PAD)[None, :]
        out_real += s_real * p_real - s_imag * p_imag
        out_imag += s_real * p_imag + s_imag * p_real
    inverse = inverse_ptr + f[:, None] * W_PAD + w[None, :]
    y = _dot_step(tl.zeros((H_PAD, W_PAD), dtype=accumulate), out_real, tl.load(inverse), PRECISION, False)
    y = _dot_step(y, out_imag, tl.load(inverse + F_PAD * W_PAD), PRECISION, False)
    tl.store(y_ptr + plane * (H * W) + u[:, None] * W + w[None, :], y.to(y_ptr.dtype.element_ty), mask=inside)


def spectral_conv_previous(x: torch.Tensor, spectra: spectral.BoundarySpectra, grid: Sequence[int],
                           num_warps: int = 4, num_stages: int = 1) -> torch.Tensor:
    """Triton twin of ``spectral.spectral_conv``: x (B, C, H, W) fp32 or fp64, Ŝ -> (B, C, H, W).

    A program holds one plane padded to powers of two (``toeplitz.padded_width``), so it suits planes
    up to 64 a side, with the prefix spectrum parked in a scratch of B·C·H·2·Fp entries in x's dtype."""
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the spectral box form runs fp32 and fp64 inputs, got {x.dtype}")
    x = x.contiguous()
    batch, channels, height, width = x.shape
    grid = tuple(grid)
    forward, inverse = spectral.dft_bases(grid, width, x.dtype, x.device)
    frequencies = forward.shape[-1]
    scratch = torch.empty(batch * channels * height * 2 * frequencies, device=x.device, dtype=x.dtype)
    y = torch.empty_like(x)
    _spectral_box_kernel_previous[(batch, channels)](
        x, spectra.spectra.to(x.dtype).contiguous(), _offsets_tensor(spectra.offsets, x.device), forward, inverse,
        scratch, y, channels, len(spectra.offsets), height, width, PRECISION=_dot_precision(x.dtype),
        H_PAD=padded_width(height), W_PAD=padded_width(width), F_PAD=frequencies, num_warps=num_warps,
        num_stages=num_stages)
    return y
