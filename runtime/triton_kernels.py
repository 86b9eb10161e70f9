"""Triton kernels for the SAT form of peripheral convolution (see sat.py).

Two launchers, twins of ``sat.sat_taps`` and ``sat.sat_tap_sums``:

* ``sat_taps_triton(x, row_offsets, col_offsets, coeffs)``: forward and grad-input.
* ``sat_tap_sums_triton(dy, x, row_offsets, col_offsets)``: grad-weight.

A program owns BLOCK_C whole (H, W) planes of one image. It builds their
exclusive SAT in registers (two ``tl.cumsum``) and parks it in an fp32
scratch (rows of BLOCK_W, so every row starts 16-byte aligned) that stays hot
in L1/L2. The taps then never gather per tap: one pass combines whole aligned
SAT rows (vector loads) and parks the result, a second reads it back with one
column shift, so a gather costs one load per column offset, not per tap.
Inputs fp32/bf16/fp16 accumulate in fp32, fp64 in fp64. When
TRITON_INTERPRET=1 is set before triton is imported, the kernels run through
Triton's interpreter, CPU tensors included; that is how CI tests them.
"""
from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from runtime.sat import accumulate_dtype


@triton.jit
def _park_sat(x_planes, sat_planes, u, v, H, W, ACC_FP64: tl.constexpr, BLOCK_W: tl.constexpr):
    """Store S[u, v] = Σ_{h<u, w<v} x[h, w] (the inclusive cumsum of x shifted down-right by
    one) for rows u <= H of (H+1, BLOCK_W) scratch planes, then sync the program."""
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    inside = (u >= 1) & (u <= H) & (v >= 1) & (v <= W)
    x = tl.load(x_planes + (u - 1) * W + (v - 1), mask=inside, other=0.0).to(acc_dtype)
    tl.store(sat_planes + u * BLOCK_W + v, tl.cumsum(tl.cumsum(x, axis=1), axis=2), mask=u <= H)
    tl.debug_barrier()


@triton.jit
def _taps_kernel(x_ptr, sat_ptr, q_ptr, coeff_ptr, row_off_ptr, col_off_ptr, y_ptr,
                 C, H, W, N_ROWS: tl.constexpr, N_COLS, ACC_FP64: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, TILE_H: tl.constexpr):
    """y[n, c, h, w] = Σ_ij coeff[c, i, j] · S[clamp(h + row_i, 0, H), clamp(w + col_j, 0, W)].

    Program = BLOCK_C planes of image n. Per tile of TILE_H output rows and per
    column offset j: Q_j[h, v] = Σ_i coeff[c, i, j] · S[row_i(h), v] from whole SAT
    rows, parked in a per-program scratch, then y[h, w] += Q_j[h, clamp(w + col_j)].
    """
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = pid // c_blocks
    c0 = (pid % c_blocks) * BLOCK_C
    real = (c0 + tl.arange(0, BLOCK_C) < C)[:, None, None]
    # Planes past C repeat the last real one (same SAT values), so loads need no channel mask.
    local = (tl.minimum(c0 + tl.arange(0, BLOCK_C), C - 1) - c0)[:, None, None]
    plane = (n * C + c0).to(tl.int64)
    u = tl.arange(0, BLOCK_H)[None, :, None]
    v = tl.arange(0, BLOCK_W)[None, None, :]

    sat_planes = sat_ptr + plane * (H + 1) * BLOCK_W + local * ((H + 1) * BLOCK_W)
    _park_sat(x_ptr + plane * H * W + local * (H * W), sat_planes, u, v, H, W, ACC_FP64, BLOCK_W)

    coeffs = coeff_ptr + (c0 + local) * (N_ROWS * N_COLS)
    rows = tl.arange(0, TILE_H)[None, :, None]
    q_tile = q_ptr + pid.to(tl.int64) * (BLOCK_C * TILE_H * BLOCK_W) + local * (TILE_H * BLOCK_W) + rows * BLOCK_W
    for h0 in range(0, H, TILE_H):
        h = h0 + rows
        acc = tl.zeros((BLOCK_C, TILE_H, BLOCK_W), dtype=acc_dtype)
        for j in range(N_COLS):
            q = tl.zeros((BLOCK_C, TILE_H, BLOCK_W), dtype=acc_dtype)
            for i in tl.static_range(N_ROWS):
                row = tl.minimum(tl.maximum(h + tl.load(row_off_ptr + i), 0), H)
                q += tl.load(coeffs + i * N_COLS + j) * tl.load(sat_planes + row * BLOCK_W + v)
            tl.store(q_tile + v, q)
            tl.debug_barrier()
            acc += tl.load(q_tile + tl.minimum(tl.maximum(v + tl.load(col_off_ptr + j), 0), W))
            tl.debug_barrier()
        tl.store(y_ptr + plane * H * W + local * (H * W) + h * W + v, acc.to(y_ptr.dtype.element_ty),
                 mask=real & (h < H) & (v < W))


@triton.jit
def _tap_sums_kernel(dy_ptr, x_ptr, sat_ptr, q_ptr, row_off_ptr, col_off_ptr, out_ptr,
                     C, H, W, N_ROWS, N_COLS, ACC_FP64: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[n, c, i, j] = Σ_hw dy[n, c, h, w] · S[clamp(h + row_i, 0, H), clamp(w + col_j, 0, W)].

    Per column offset j the column-shifted SAT S[:, clamp(w + col_j)] is parked in a
    per-program scratch once; every row offset i then reads whole aligned rows of it.
    """
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    n = pid // c_blocks
    c0 = (pid % c_blocks) * BLOCK_C
    real = c0 + tl.arange(0, BLOCK_C) < C
    local = (tl.minimum(c0 + tl.arange(0, BLOCK_C), C - 1) - c0)[:, None, None]
    plane = (n * C + c0).to(tl.int64)
    u = tl.arange(0, BLOCK_H)[None, :, None]
    v = tl.arange(0, BLOCK_W)[None, None, :]

    sat_planes = sat_ptr + plane * (H + 1) * BLOCK_W + local * ((H + 1) * BLOCK_W)
    _park_sat(x_ptr + plane * H * W + local * (H * W), sat_planes, u, v, H, W, ACC_FP64, BLOCK_W)

    # Duplicate planes past C get dy = 0, so they add nothing.
    dy = tl.load(dy_ptr + plane * H * W + local * (H * W) + u * W + v,
                 mask=real[:, None, None] & (u < H) & (v < W), other=0.0).to(acc_dtype)
    shifted = q_ptr + pid.to(tl.int64) * (BLOCK_C * BLOCK_H * BLOCK_W) + local * (BLOCK_H * BLOCK_W)
    sums = out_ptr + (n * C + c0 + tl.arange(0, BLOCK_C)).to(tl.int64) * (N_ROWS * N_COLS)
    for j in range(N_COLS):
        col = tl.minimum(tl.maximum(v + tl.load(col_off_ptr + j), 0), W)
        tl.store(shifted + u * BLOCK_W + v, tl.load(sat_planes + tl.minimum(u, H) * BLOCK_W + col))
        tl.debug_barrier()
        for i in range(N_ROWS):
            row = tl.minimum(tl.maximum(u + tl.load(row_off_ptr + i), 0), H)
            taps = tl.load(shifted + row * BLOCK_W + v)
            tl.store(sums + i * N_COLS + j, tl.sum(tl.sum(dy * taps, axis=2), axis=1), mask=real)
        tl.debug_barrier()


INTERPRETED = not isinstance(_taps_kernel, triton.runtime.JITFunction)
"""True when TRITON_INTERPRET=1 was set before triton was imported: kernels run on CPU tensors too."""


@functools.lru_cache(maxsize=256)
def _offsets_tensor(offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(offsets, dtype=torch.int32, device=device)


def _plane_blocks(height: int, width: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W): powers of two holding the (H+1, W+1) SAT."""
    return triton.next_power_of_2(height + 1), triton.next_power_of_2(width + 1)


def _warps_for_plane(num_warps: int, plane_entries: int) -> int:
    """At least enough warps that building a whole SAT plane takes <= 64 registers a thread."""
    return max(num_warps, min(16, plane_entries // (64 * 32)))


def sat_taps_triton(x: torch.Tensor, row_offsets: Sequence[int], col_offsets: Sequence[int],
                    coeffs: torch.Tensor, tile_elements: int = 256, num_warps: int = 2) -> torch.Tensor:
    """Triton twin of ``sat.sat_taps``: x (B, C, H, W), coeffs (C, n_rows, n_cols) -> (B, C, H, W).

    A program holds tiles of about ``tile_elements`` outputs (BLOCK_C planes x TILE_H rows).
    """
    x = x.contiguous()
    batch, channels, height, width = x.shape
    acc = accumulate_dtype(x.dtype)
    block_h, block_w = _plane_blocks(height, width)
    tile_h = max(1, min(block_h, tile_elements // block_w))
    block_c = max(1, min(triton.next_power_of_2(channels), tile_elements // (tile_h * block_w)))
    programs = batch * triton.cdiv(channels, block_c)
    sat = torch.empty(batch * channels * (height + 1) * block_w, device=x.device, dtype=acc)
    parked = torch.empty(programs * block_c * tile_h * block_w, device=x.device, dtype=acc)
    # Triton's interpreter truncates fp32 -> bf16/fp16 instead of rounding: there, write fp32.
    y = torch.empty_like(x, dtype=acc if INTERPRETED else x.dtype)
    _taps_kernel[(programs,)](
        x, sat, parked, coeffs.to(acc).contiguous(), _offsets_tensor(tuple(row_offsets), x.device),
        _offsets_tensor(tuple(col_offsets), x.device), y, channels, height, width,
        len(row_offsets), len(col_offsets), ACC_FP64=acc == torch.float64,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w, TILE_H=tile_h,
        num_warps=_warps_for_plane(num_warps, block_c * block_h * block_w))
    return y.to(x.dtype)


def sat_tap_sums_triton(dy: torch.Tensor, x: torch.Tensor, row_offsets: Sequence[int],
                        col_offsets: Sequence[int], plane_elements: int = 4096,
                        num_warps: int = 4) -> torch.Tensor:
    """Triton twin of ``sat.sat_tap_sums``: dy, x (B, C, H, W) -> (C, n_rows, n_cols).

    A program holds BLOCK_C whole planes, about ``plane_elements`` SAT entries.
    """
    x, dy = x.contiguous(), dy.contiguous()
    batch, channels, height, width = x.shape
    acc = accumulate_dtype(x.dtype)
    block_h, block_w = _plane_blocks(height, width)
    block_c = max(1, min(triton.next_power_of_2(channels), plane_elements // (block_h * block_w)))
    programs = batch * triton.cdiv(channels, block_c)
    sat = torch.empty(batch * channels * (height + 1) * block_w, device=x.device, dtype=acc)
    parked = torch.empty(programs * block_c * block_h * block_w, device=x.device, dtype=acc)
    partial = torch.empty(batch, channels, len(row_offsets), len(col_offsets), device=x.device, dtype=acc)
    _tap_sums_kernel[(programs,)](
        dy, x, sat, parked, _offsets_tensor(tuple(row_offsets), x.device),
        _offsets_tensor(tuple(col_offsets), x.device), partial, channels, height, width,
        len(row_offsets), len(col_offsets), ACC_FP64=acc == torch.float64,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w,
        num_warps=_warps_for_plane(num_warps, block_c * block_h * block_w))
    return partial.sum(0)
