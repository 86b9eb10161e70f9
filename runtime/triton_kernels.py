"""Triton kernels for the SAT form of peripheral convolution (see sat.py).

Two primitives, twins of ``sat.sat_taps`` and ``sat.sat_tap_sums``:

* ``sat_taps_triton(x, row_offsets, col_offsets, coeffs)``: forward and grad-input.
* ``sat_tap_sums_triton(dy, x, row_offsets, col_offsets)``: grad-weight.

One program owns BLOCK_C whole (H, W) planes of one image. It builds the
exclusive SAT of its planes in registers (two ``tl.cumsum``), writes it to an
fp32 scratch (B, C, H+1, W+1) that stays hot in L1/L2, and after a barrier
reads it back at the clamped tap positions: (n_rows x n_cols) loads and FMAs
per output, never K². Inputs fp32/bf16/fp16 accumulate in fp32, fp64 in fp64.
Runs under ``TRITON_INTERPRET=1`` on CPU tensors.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from runtime.sat import accumulate_dtype


@triton.jit
def _build_sat(x_ptr, sat_ptr, plane, local, H, W, ACC_FP64: tl.constexpr,
               BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Write S[u, v] = Σ_{h<u, w<v} x[h, w] (u <= H, v <= W) of planes ``plane + local`` (local: (BLOCK_C, 1, 1))."""
    cs = local
    u = tl.arange(0, BLOCK_H)[None, :, None]
    v = tl.arange(0, BLOCK_W)[None, None, :]
    inside = (u >= 1) & (u <= H) & (v >= 1) & (v <= W)
    x = tl.load(x_ptr + plane * H * W + cs * (H * W) + (u - 1) * W + (v - 1), mask=inside, other=0.0)
    if ACC_FP64:
        x = x.to(tl.float64)
    else:
        x = x.to(tl.float32)
    sat = tl.cumsum(tl.cumsum(x, axis=1), axis=2)
    tl.store(sat_ptr + plane * (H + 1) * (W + 1) + cs * ((H + 1) * (W + 1)) + u * (W + 1) + v, sat,
             mask=(u <= H) & (v <= W))
    tl.debug_barrier()


@triton.jit
def _sat_taps_kernel(x_ptr, sat_ptr, coeff_ptr, row_off_ptr, col_off_ptr, y_ptr,
                     C, H, W, N_ROWS, N_COLS, ACC_FP64: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """y[n, c, h, w] = Σ_ij coeff[c, i, j] · S[n, c, clamp(h + row_i), clamp(w + col_j)]."""
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = pid // c_blocks
    c0 = (pid % c_blocks) * BLOCK_C
    # Planes past C repeat the last real one (same SAT values), so no load needs a channel mask.
    channels = tl.minimum(c0 + tl.arange(0, BLOCK_C), C - 1)
    plane = (n * C + c0).to(tl.int64)
    local = (channels - c0)[:, None, None]
    _build_sat(x_ptr, sat_ptr, plane, local, H, W, ACC_FP64, BLOCK_H, BLOCK_W)

    sat_block = sat_ptr + plane * (H + 1) * (W + 1)
    h = tl.arange(0, BLOCK_H)[None, :, None]
    w = tl.arange(0, BLOCK_W)[None, None, :]
    if ACC_FP64:
        acc = tl.zeros((BLOCK_C, BLOCK_H, BLOCK_W), dtype=tl.float64)
    else:
        acc = tl.zeros((BLOCK_C, BLOCK_H, BLOCK_W), dtype=tl.float32)
    coeff_rows = coeff_ptr + channels[:, None, None] * (N_ROWS * N_COLS)
    for i in range(N_ROWS):
        row = tl.minimum(tl.maximum(h + tl.load(row_off_ptr + i), 0), H)
        row_offsets = local * ((H + 1) * (W + 1)) + row * (W + 1)
        for j in range(N_COLS):
            col = tl.minimum(tl.maximum(w + tl.load(col_off_ptr + j), 0), W)
            coeff = tl.load(coeff_rows + i * N_COLS + j)
            acc += coeff * tl.load(sat_block + row_offsets + col)
    out = (c0 + tl.arange(0, BLOCK_C) < C)[:, None, None] & (h < H) & (w < W)
    tl.store(y_ptr + plane * H * W + local * (H * W) + h * W + w, acc.to(y_ptr.dtype.element_ty), mask=out)


@triton.jit
def _sat_tap_sums_kernel(dy_ptr, x_ptr, sat_ptr, row_off_ptr, col_off_ptr, out_ptr,
                         C, H, W, N_ROWS, N_COLS, ACC_FP64: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[n, c, i, j] = Σ_hw dy[n, c, h, w] · S[n, c, clamp(h + row_i), clamp(w + col_j)]."""
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = pid // c_blocks
    c0 = (pid % c_blocks) * BLOCK_C
    channels = tl.minimum(c0 + tl.arange(0, BLOCK_C), C - 1)
    plane = (n * C + c0).to(tl.int64)
    local = (channels - c0)[:, None, None]
    _build_sat(x_ptr, sat_ptr, plane, local, H, W, ACC_FP64, BLOCK_H, BLOCK_W)

    h = tl.arange(0, BLOCK_H)[None, :, None]
    w = tl.arange(0, BLOCK_W)[None, None, :]
    # Duplicate planes past C get dy = 0, so they add nothing.
    real = (c0 + tl.arange(0, BLOCK_C) < C)[:, None, None]
    dy = tl.load(dy_ptr + plane * H * W + local * (H * W) + h * W + w,
                 mask=real & (h < H) & (w < W), other=0.0)
    if ACC_FP64:
        dy = dy.to(tl.float64)
    else:
        dy = dy.to(tl.float32)
    sat_block = sat_ptr + plane * (H + 1) * (W + 1)
    c_out = out_ptr + (n * C + c0 + tl.arange(0, BLOCK_C)).to(tl.int64) * (N_ROWS * N_COLS)
    for i in range(N_ROWS):
        row = tl.minimum(tl.maximum(h + tl.load(row_off_ptr + i), 0), H)
        row_offsets = local * ((H + 1) * (W + 1)) + row * (W + 1)
        for j in range(N_COLS):
            col = tl.minimum(tl.maximum(w + tl.load(col_off_ptr + j), 0), W)
            sums = tl.sum(tl.sum(dy * tl.load(sat_block + row_offsets + col), axis=2), axis=1)
            tl.store(c_out + i * N_COLS + j, sums, mask=c0 + tl.arange(0, BLOCK_C) < C)


@functools.lru_cache(maxsize=256)
def _offsets_tensor(offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def _launch_shape(channels: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(BLOCK_C, BLOCK_H, BLOCK_W, num_warps): whole SAT planes, about 4096 elements a program."""
    block_h = triton.next_power_of_2(height + 1)
    block_w = triton.next_power_of_2(width + 1)
    block_c = max(1, min(triton.next_power_of_2(channels), 4096 // (block_h * block_w)))
    num_warps = max(1, min(8, block_c * block_h * block_w // 256))
    return block_c, block_h, block_w, num_warps


def sat_taps_triton(x: torch.Tensor, row_offsets: Sequence[int], col_offsets: Sequence[int],
                    coeffs: torch.Tensor) -> torch.Tensor:
    """Triton twin of ``sat.sat_taps``: x (B, C, H, W), coeffs (C, n_rows, n_cols) -> (B, C, H, W)."""
    x = x.contiguous()
    batch, channels, height, width = x.shape
    acc = accumulate_dtype(x.dtype)
    sat = torch.empty(batch, channels, height + 1, width + 1, device=x.device, dtype=acc)
    y = torch.empty_like(x)
    block_c, block_h, block_w, num_warps = _launch_shape(channels, height, width)
    grid = (batch * triton.cdiv(channels, block_c),)
    _sat_taps_kernel[grid](
        x, sat, coeffs.to(acc).contiguous(), _offsets_tensor(tuple(row_offsets), x.device),
        _offsets_tensor(tuple(col_offsets), x.device), y, channels, height, width,
        len(row_offsets), len(col_offsets), ACC_FP64=acc == torch.float64,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=num_warps)
    return y


def sat_tap_sums_triton(dy: torch.Tensor, x: torch.Tensor, row_offsets: Sequence[int],
                        col_offsets: Sequence[int]) -> torch.Tensor:
    """Triton twin of ``sat.sat_tap_sums``: dy, x (B, C, H, W) -> (C, n_rows, n_cols)."""
    x, dy = x.contiguous(), dy.contiguous()
    batch, channels, height, width = x.shape
    acc = accumulate_dtype(x.dtype)
    sat = torch.empty(batch, channels, height + 1, width + 1, device=x.device, dtype=acc)
    partial = torch.empty(batch, channels, len(row_offsets), len(col_offsets), device=x.device, dtype=acc)
    block_c, block_h, block_w, num_warps = _launch_shape(channels, height, width)
    grid = (batch * triton.cdiv(channels, block_c),)
    _sat_tap_sums_kernel[grid](
        dy, x, sat, _offsets_tensor(tuple(row_offsets), x.device),
        _offsets_tensor(tuple(col_offsets), x.device), partial, channels, height, width,
        len(row_offsets), len(col_offsets), ACC_FP64=acc == torch.float64,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w, num_warps=num_warps)
    return partial.sum(0)


INTERPRETED = not isinstance(_sat_taps_kernel, triton.runtime.JITFunction)
"""True when TRITON_INTERPRET=1 was set before triton was imported: kernels run on CPU tensors."""
