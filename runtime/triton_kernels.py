"""Triton kernels for peripheral convolution: the SAT form (sat.py), the Toeplitz and box forms (toeplitz.py).

Seven launchers, twins of the plain-torch primitives with the same signatures:

* ``sat_taps_triton(x, row_offsets, col_offsets, coeffs)``: SAT forward and grad-input.
* ``sat_tap_sums_triton(dy, x, row_offsets, col_offsets)``: SAT grad-weight.
* ``toeplitz_conv_triton(x, lag_kernel)``: Toeplitz forward and grad-input (tensor cores).
* ``box_conv_triton(x, column_blocks, grid)``: box-form forward and grad-input (tensor cores), on
  ``column_prefix_triton(x)``; ``plane_box_conv_triton(x, column_blocks, grid)`` is the same product
  with a whole plane on chip and the box sums formed there as tensor-core products too.
* ``box_products_triton(dy, x, grid)``: box-form grad-weight (tensor cores), on
  ``column_prefix_triton(x)``.

SAT: a program owns BLOCK_C whole (H, W) planes of one image. It builds their
exclusive SAT in registers (two ``tl.cumsum``) and parks it in an fp32
scratch (rows of BLOCK_W, so every row starts 16-byte aligned) that stays hot
in L1/L2. The taps then never gather per tap: one pass combines whole aligned
SAT rows (vector loads) and parks the result, a second reads it back with one
column shift, so a gather costs one load per column offset, not per tap.

Toeplitz: per channel, a GEMM over flattened pixels whose Toeplitz operand is
gathered on the fly from the (2H-1, 2W-1) lag kernel; see each kernel.

Box form: per channel, a GEMM over image rows whose A operand is formed from the column
prefix sum one kernel-row cell at a time (``_box_conv_kernel``; ``_box_products_kernel`` is its
grad-weight twin). Plane box: per (image, channel) plane, the box sums as products of a 0/1 band
with the plane held on chip (``_plane_box_kernel``).

Plane sizes H and W are compile-time constants: a model has a few of them, and knowing them lets
Triton prove that image rows are aligned, so loads vectorize and the GEMMs' input tiles are copied
asynchronously in a software pipeline (the Toeplitz forward at stage 2 bf16 on an H100: 0.058
against 0.077 ms when the plane stride was a runtime value).

Inputs fp32/bf16/fp16 accumulate in fp32, fp64 in fp64. When
TRITON_INTERPRET=1 is set before triton is imported, the kernels run through
Triton's interpreter, CPU tensors included; that is how CI tests them.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import triton
import triton.language as tl

from runtime import spectral
from runtime.constants import device_constant
from runtime.sat import accumulate_dtype, clamped_offsets
from runtime.toeplitz import (HALF_SCALE_BITS, cell_lag_ranges, cells_within_reach, half_block_exponents,
                              half_blocks, lag_cells, lag_reach, padded_width)

_TRITON_TYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16,
                 torch.float64: tl.float64}


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
def _own_planes(x_ptr, sat_ptr, C, H, W, ACC_FP64: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
                BLOCK_W: tl.constexpr):
    """Set up the BLOCK_C planes of one image that this program owns and park their SAT.

    Returns (c0 first channel, plane first (n, c) plane index (int64), real (BLOCK_C,) channel < C,
    local (BLOCK_C, 1, 1) plane offsets, offsets (BLOCK_C, 1, 1) element offset of each plane in an
    (B, C, H, W) tensor, u (1, BLOCK_H, 1), v (1, 1, BLOCK_W), sat_planes pointer). Planes past C repeat
    the last real one (same SAT values), so loads need no channel mask.
    """
    pid = tl.program_id(0)
    c_blocks = tl.cdiv(C, BLOCK_C)
    c0 = (pid % c_blocks) * BLOCK_C
    plane = ((pid // c_blocks) * C + c0).to(tl.int64)
    real = c0 + tl.arange(0, BLOCK_C) < C
    local = (tl.minimum(c0 + tl.arange(0, BLOCK_C), C - 1) - c0)[:, None, None]
    offsets = plane * H * W + local * (H * W)
    u = tl.arange(0, BLOCK_H)[None, :, None]
    v = tl.arange(0, BLOCK_W)[None, None, :]
    sat_planes = sat_ptr + plane * (H + 1) * BLOCK_W + local * ((H + 1) * BLOCK_W)
    _park_sat(x_ptr + offsets, sat_planes, u, v, H, W, ACC_FP64, BLOCK_W)
    return c0, plane, real, local, offsets, u, v, sat_planes


@triton.jit
def _taps_kernel(x_ptr, sat_ptr, q_ptr, coeff_ptr, row_off_ptr, col_off_ptr, y_ptr,
                 C, H: tl.constexpr, W: tl.constexpr, N_ROWS: tl.constexpr, N_COLS, ACC_FP64: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, TILE_H: tl.constexpr,
                 COL_CHUNK: tl.constexpr):
    """y[n, c, h, w] = Σ_ij coeff[c, i, j] · S[clamp(h + row_i, 0, H), clamp(w + col_j, 0, W)].

    Program = BLOCK_C planes of image n. Per tile of TILE_H output rows and per chunk of
    COL_CHUNK column offsets j: Q_j[h, v] = Σ_i coeff[c, i, j] · S[row_i(h), v] from whole SAT
    rows (each row read once per chunk and used for all its j), parked in a per-program
    scratch, then y[h, w] += Q_j[h, clamp(w + col_j)].
    """
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    pid = tl.program_id(0)
    c0, plane, real, local, offsets, u, v, sat_planes = _own_planes(x_ptr, sat_ptr, C, H, W, ACC_FP64, BLOCK_C,
                                                                    BLOCK_H, BLOCK_W)
    channels = tl.minimum(c0 + tl.arange(0, BLOCK_C), C - 1)
    coeff_rows = coeff_ptr + channels[:, None] * (N_ROWS * N_COLS)  # (BLOCK_C, 1)
    chunk = tl.arange(0, COL_CHUNK)
    rows = tl.arange(0, TILE_H)[None, :, None]
    # Scratch (BLOCK_C, COL_CHUNK, TILE_H, BLOCK_W) per program: q_rows points at the chunk's first slot.
    q_rows = (q_ptr + pid.to(tl.int64) * (BLOCK_C * COL_CHUNK * TILE_H * BLOCK_W)
              + local * (COL_CHUNK * TILE_H * BLOCK_W) + rows * BLOCK_W)  # (BLOCK_C, TILE_H, 1)
    q_slots = q_rows[:, None, :, :] + chunk[None, :, None, None] * (TILE_H * BLOCK_W) + v[:, None, :, :]
    for h0 in range(0, H, TILE_H):
        h = h0 + rows
        acc = tl.zeros((BLOCK_C, TILE_H, BLOCK_W), dtype=acc_dtype)
        for j0 in range(0, N_COLS, COL_CHUNK):
            j = j0 + chunk  # (COL_CHUNK,)
            q = tl.zeros((BLOCK_C, COL_CHUNK, TILE_H, BLOCK_W), dtype=acc_dtype)
            for i in tl.static_range(N_ROWS):
                row = tl.minimum(tl.maximum(h + tl.load(row_off_ptr + i), 0), H)
                sat_rows = tl.load(sat_planes + row * BLOCK_W + v)  # (BLOCK_C, TILE_H, BLOCK_W)
                weights = tl.load(coeff_rows + i * N_COLS + j[None, :], mask=(j < N_COLS)[None, :],
                                  other=0.0)  # (BLOCK_C, COL_CHUNK)
                q += weights[:, :, None, None] * sat_rows[:, None, :, :]
            tl.store(q_slots, q)
            tl.debug_barrier()
            for k in tl.static_range(COL_CHUNK):
                if j0 + k < N_COLS:
                    col = tl.minimum(tl.maximum(v + tl.load(col_off_ptr + j0 + k), 0), W)
                    acc += tl.load(q_rows + k * (TILE_H * BLOCK_W) + col)
            tl.debug_barrier()
        tl.store(y_ptr + offsets + h * W + v, acc.to(y_ptr.dtype.element_ty),
                 mask=real[:, None, None] & (h < H) & (v < W))


@triton.jit
def _tap_sums_kernel(dy_ptr, x_ptr, sat_ptr, q_ptr, row_off_ptr, col_off_ptr, out_ptr,
                     C, H: tl.constexpr, W: tl.constexpr, N_ROWS, N_COLS, ACC_FP64: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """out[n, c, i, j] = Σ_hw dy[n, c, h, w] · S[clamp(h + row_i, 0, H), clamp(w + col_j, 0, W)].

    Per column offset j the column-shifted SAT S[:, clamp(w + col_j)] is parked in a
    per-program scratch once; every row offset i then reads whole aligned rows of it.
    """
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    pid = tl.program_id(0)
    c0, plane, real, local, offsets, u, v, sat_planes = _own_planes(x_ptr, sat_ptr, C, H, W, ACC_FP64, BLOCK_C,
                                                                    BLOCK_H, BLOCK_W)
    # Duplicate planes past C get dy = 0, so they add nothing.
    dy = tl.load(dy_ptr + offsets + u * W + v,
                 mask=real[:, None, None] & (u < H) & (v < W), other=0.0).to(acc_dtype)
    shifted = q_ptr + pid.to(tl.int64) * (BLOCK_C * BLOCK_H * BLOCK_W) + local * (BLOCK_H * BLOCK_W)
    sums = out_ptr + (plane + tl.arange(0, BLOCK_C)) * (N_ROWS * N_COLS)
    for j in range(N_COLS):
        col = tl.minimum(tl.maximum(v + tl.load(col_off_ptr + j), 0), W)
        tl.store(shifted + u * BLOCK_W + v, tl.load(sat_planes + tl.minimum(u, H) * BLOCK_W + col))
        tl.debug_barrier()
        for i in range(N_ROWS):
            row = tl.minimum(tl.maximum(u + tl.load(row_off_ptr + i), 0), H)
            taps = tl.load(shifted + row * BLOCK_W + v)
            tl.store(sums + i * N_COLS + j, tl.sum(tl.sum(dy * taps, axis=2), axis=1), mask=real)
        tl.debug_barrier()


@triton.jit
def _tf32_split(value):
    """(hi, lo) with value = hi + lo exactly: hi rounded to TF32's 10-bit mantissa, lo the fp32 rest
    (finite values; the tensor cores read lo's top 10 bits, about 2^-21 of value)."""
    hi = ((value.to(tl.int32, bitcast=True) + 0x1000) & -8192).to(tl.float32, bitcast=True)
    return hi, value - hi


@triton.jit
def _dot_step(acc, a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr, A_IS_TF32: tl.constexpr = False):
    """acc + a @ b on tensor cores (bf16/fp16 native, fp32 as PRECISION), or for fp64 ("ieee",
    where tl.dot does not compile on CUDA) as a broadcast-and-sum.

    fp32 "tf32x3" is tl.dot's own scheme with the operands split here: the small products lo·hi and
    hi·lo summed from zero, hi·hi on top, the whole added to acc (summed into acc itself the small
    products lose their low bits: 7-9x the error, docs/runtime.md); two products where ``A_IS_TF32``,
    a exact in TF32 such as 0/1 entries. Same numbers as tl.dot's for finite values, in three
    integer/float operations per element where tl.dot spends about seven guarding infinities (an
    infinite input gives NaN here): on sm_90 20-30% fewer instructions in the fp32 kernels' loops
    (``bench/inspect_kernels.py``)."""
    if PRECISION == "ieee":
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    elif PRECISION == "tf32x3":
        b_hi, b_lo = _tf32_split(b)
        small = tl.zeros(acc.shape, dtype=tl.float32)
        if A_IS_TF32:
            small = tl.dot(a, b_lo, small, input_precision="tf32")
            acc += tl.dot(a, b_hi, small, input_precision="tf32")
        else:
            a_hi, a_lo = _tf32_split(a)
            small = tl.dot(a_lo, b_hi, small, input_precision="tf32")
            small = tl.dot(a_hi, b_lo, small, input_precision="tf32")
            acc += tl.dot(a_hi, b_hi, small, input_precision="tf32")
    else:
        if UPCAST:  # the interpreter's dot mishandles bf16/fp16; their products are exact in fp32
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _float_exponent(value):
    """floor(log2 |value|) of fp32 values from their exponent bits (toeplitz.float_exponent)."""
    return ((tl.abs(value).to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127


@triton.jit
def _power_of_two(exponent):
    """2^exponent, exactly, for int32 exponents in fp32's normal range [-126, 127]."""
    return ((exponent + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _clamp_exponent(exponent):
    """Exponents e with 2^e and 2^-e normal fp32 numbers (toeplitz.clamp_exponent)."""
    return tl.minimum(tl.maximum(exponent, -126), 126)


@triton.jit
def _half_box_exponent(x, BOX_BITS, SCALE_BITS: tl.constexpr):
    """e with |box sum|·2^e < 2^(SCALE_BITS+1) for every box sum of up to 2^BOX_BITS rows of the
    plane x: from x's largest magnitude (|x| < 2^(E+1) for E its exponent)."""
    amax = tl.max(tl.max(tl.abs(x.to(tl.float32)), axis=1), axis=0)
    return _clamp_exponent(SCALE_BITS - BOX_BITS - _float_exponent(amax))


@triton.jit
def _half_box_scales(x, exponents_ptr, c, BOX_BITS, SCALE_BITS: tl.constexpr, HALF_BOXES: tl.constexpr):
    """(e, e_c) for the plane box's wide cells as one fp16 product each: 2^e brings plane x's box
    sums into fp16's range (``_half_box_exponent``), 2^e_c channel c's R (at exponents_ptr); (0, 0)
    without HALF_BOXES."""
    if HALF_BOXES:
        scales = _half_box_exponent(x, BOX_BITS, SCALE_BITS), tl.load(exponents_ptr + c)
    else:
        scales = 0, 0
    return scales


@triton.jit
def _times_powers_of_two(acc, first, second, HALF_BOXES: tl.constexpr):
    """acc·2^first·2^second with HALF_BOXES (exact; two factors, as their sum can leave fp32's
    exponent range), else acc."""
    if HALF_BOXES:
        acc = acc * _power_of_two(first) * _power_of_two(second)
    return acc


@triton.jit
def _wide_cell_product(acc, box, block, box_exponent, x_dtype: tl.constexpr, PRECISION: tl.constexpr,
                       UPCAST: tl.constexpr, HI_LO: tl.constexpr, HALF_BOXES: tl.constexpr):
    """acc + X_a @ R_a for a wide cell's box sum X_a (exact, in acc's dtype): with HALF_BOXES one fp16
    product of X_a·2^e and block = R_a·2^e_c (acc scaled by 2^(e+e_c)), else ``_box_times_block``
    with block = R_a."""
    if HALF_BOXES:
        acc = _dot_step(acc, (box * _power_of_two(box_exponent)).to(tl.float16), block, PRECISION, UPCAST)
    else:
        acc = _box_times_block(acc, box, block, x_dtype, PRECISION, UPCAST, HI_LO)
    return acc


@triton.jit
def _wide_cell(acc, band, x, block, box_exponent, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
               HI_LO: tl.constexpr, HALF_BOXES: tl.constexpr):
    """acc + (V_a @ x) @ R_a for a wide cell: its box sum as a band product (exact in fp32), then
    ``_wide_cell_product`` with block = R_a (or its fp16 copy)."""
    box = _dot_step(tl.zeros(acc.shape, dtype=acc.dtype), band, x, PRECISION, UPCAST)
    return _wide_cell_product(acc, box, block, box_exponent, x.dtype, PRECISION, UPCAST, HI_LO, HALF_BOXES)


@triton.jit
def _toeplitz_kernel(x_ptr, kc_ptr, y_ptr, B, C, H: tl.constexpr, W: tl.constexpr, LAG_LO, LAG_HI,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """y[n, c, p] = Σ_q x[n, c, q] · kc[c, q - p] over flattened pixels p, q (see toeplitz.py).

    Program = BLOCK_M images x BLOCK_N output pixels of channel c: a GEMM whose B operand
    (BLOCK_K x BLOCK_N of the Toeplitz matrix) is gathered from the channel's lag kernel
    (2H-1, 2W-1), which stays in L1/L2. Only input rows within the kernel's vertical reach
    [LAG_LO, LAG_HI] of the tile's output rows are visited.
    """
    pid_n, c, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    hw = H * W
    lag_w = 2 * W - 1
    images = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    p = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Lag index q - p = u[q] - v[p] + centre, with u, v the pixels' positions in the lag grid.
    v = (p // W) * lag_w + p % W
    kernel = kc_ptr + c.to(tl.int64) * ((2 * H - 1) * lag_w) + (H - 1) * lag_w + (W - 1)
    x_rows = x_ptr + (images.to(tl.int64) * C + c) * hw
    first_row = (pid_n * BLOCK_N) // W
    last_row = tl.minimum(pid_n * BLOCK_N + BLOCK_N - 1, hw - 1) // W
    q_begin = (tl.maximum(first_row + LAG_LO, 0) * W) // BLOCK_K * BLOCK_K
    q_end = tl.minimum(last_row + LAG_HI + 1, H) * W
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64 if PRECISION == "ieee" else tl.float32)
    for q0 in range(q_begin, q_end, BLOCK_K):
        q = q0 + tl.arange(0, BLOCK_K)
        u = (q // W) * lag_w + q % W
        a = tl.load(x_rows[:, None] + q[None, :], mask=(images < B)[:, None] & (q < hw)[None, :], other=0.0)
        b = tl.load(kernel + (u[:, None] - v[None, :]), mask=(q < hw)[:, None] & (p < hw)[None, :], other=0.0)
        acc = _dot_step(acc, a, b, PRECISION, UPCAST)
    tl.store(y_ptr + (images.to(tl.int64) * C + c)[:, None] * hw + p[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(images < B)[:, None] & (p < hw)[None, :])


@triton.jit
def _prefix_rows(columns, h, lag, H: tl.constexpr, W: tl.constexpr, mask):
    """Rows clamp(h + lag, 0, H) of a column prefix (H+1, W): ``columns`` (M, N) points at row 0 of
    each row's plane; rows outside the image read the prefix's first or last row."""
    return tl.load(columns + (tl.minimum(tl.maximum(h + lag, 0), H) * W)[:, None], mask=mask, other=0.0)


@triton.jit
def _row_lag_products(acc, x_rows, block, u, w, lo, hi, inside, H: tl.constexpr, W: tl.constexpr,
                      PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """acc + Σ_{lag in [lo, hi)} x[u + lag] @ R_a: a narrow cell's product one row lag at a time, the
    shifted input rows read from memory (exact in every dtype). ``x_rows`` points at each output
    row's plane (a scalar or (M, 1)), ``u`` (M,) are the output rows, ``w`` (N,) the columns."""
    for lag in range(lo, hi):
        source = u + lag
        rows = tl.load(x_rows + source[:, None] * W + w[None, :],
                       mask=inside & ((source >= 0) & (source < H))[:, None], other=0.0)
        acc = _dot_step(acc, rows, block, PRECISION, UPCAST)
    return acc


@triton.jit
def _box_times_block(acc, box, block, half_dtype: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                     HI_LO: tl.constexpr):
    """acc + X_a @ R_a; with HI_LO X_a is rounded to half precision and the product of its rounding
    residue is added (about 16 bits of X_a kept)."""
    if HI_LO:
        box_hi = box.to(half_dtype)
        acc = _dot_step(acc, box_hi, block, PRECISION, UPCAST)
        acc = _dot_step(acc, (box - box_hi.to(tl.float32)).to(half_dtype), block, PRECISION, UPCAST)
    else:
        acc = _dot_step(acc, box, block, PRECISION, UPCAST)
    return acc


@triton.jit
def _box_conv_kernel(x_ptr, prefix_ptr, blocks_ptr, lo_ptr, hi_ptr, narrow_ptr, wide_ptr, y_ptr, B, C,
                     H: tl.constexpr, W: tl.constexpr, CELLS, CELL_BEGIN, CELL_END, NARROW, WIDE,
                     PRECISION: tl.constexpr, UPCAST: tl.constexpr, HI_LO: tl.constexpr, BLOCK_M: tl.constexpr,
                     W_PAD: tl.constexpr):
    """y[n, c, h] = Σ_a X_a[n, c, h] @ R_a[c] (the box form, toeplitz.box_conv).

    Program = BLOCK_M rows (n, h) of channel c: a GEMM over the kernel-row cells within the image's
    reach (CELL_BEGIN..CELL_END-1), whose A operand X_a = prefix[h + hi_a] - prefix[h + lo_a] comes
    from the fp32 column prefix. fp32/fp64: cells tile the lags (hi_a = lo_{a+1}), so each cell
    loads one row set and reuses the last as its top. HI_LO (bf16/fp16): a one-row cell (the NARROW
    at narrow_ptr) reads X_a = x[h + lo_a] straight from the input, exact; a multi-row cell (the
    WIDE at wide_ptr) rounds X_a to half precision and adds the product of its rounding residue.
    """
    pid_m, c = tl.program_id(0), tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    h = rows % H
    plane = (rows // H).to(tl.int64) * C + c
    w = tl.arange(0, W_PAD)
    inside = (rows < B * H)[:, None] & (w < W)[None, :]
    columns = prefix_ptr + plane[:, None] * ((H + 1) * W) + w[None, :]
    blocks = blocks_ptr + c.to(tl.int64) * CELLS * (W_PAD * W_PAD) + w[:, None] * W_PAD + w[None, :]
    acc = tl.zeros((BLOCK_M, W_PAD), dtype=tl.float64 if PRECISION == "ieee" else tl.float32)
    if HI_LO:
        inputs = (x_ptr + plane * (H * W))[:, None]
        for index in range(NARROW):
            cell = tl.load(narrow_ptr + index)
            lo = tl.load(lo_ptr + cell)
            acc = _row_lag_products(acc, inputs, tl.load(blocks + cell * (W_PAD * W_PAD)), h, w, lo, lo + 1, inside,
                                    H, W, PRECISION, UPCAST)
        for index in range(WIDE):
            cell = tl.load(wide_ptr + index)
            box = (_prefix_rows(columns, h, tl.load(hi_ptr + cell), H, W, inside)
                   - _prefix_rows(columns, h, tl.load(lo_ptr + cell), H, W, inside))
            acc = _box_times_block(acc, box, tl.load(blocks + cell * (W_PAD * W_PAD)), blocks_ptr.dtype.element_ty,
                                   PRECISION, UPCAST, True)
    else:
        top = _prefix_rows(columns, h, tl.load(lo_ptr + CELL_BEGIN), H, W, inside)
        for cell in range(CELL_BEGIN, CELL_END):
            bottom = _prefix_rows(columns, h, tl.load(hi_ptr + cell), H, W, inside)
            acc = _dot_step(acc, bottom - top, tl.load(blocks + cell * (W_PAD * W_PAD)), PRECISION, UPCAST)
            top = bottom
    tl.store(y_ptr + plane[:, None] * (H * W) + (h * W)[:, None] + w[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=inside)


@triton.jit
def _plane_box_kernel(x_ptr, blocks_ptr, wide_blocks_ptr, exponents_ptr, bands_ptr, row_lags_ptr, wide_ptr,
                      y_ptr, C, H: tl.constexpr, W: tl.constexpr, CELLS, ROW_LAGS, WIDE_CELLS, BOX_BITS,
                      PRECISION: tl.constexpr, UPCAST: tl.constexpr, HI_LO: tl.constexpr,
                      HALF_BOXES: tl.constexpr, SCALE_BITS: tl.constexpr, H_PAD: tl.constexpr,
                      W_PAD: tl.constexpr):
    """y[n, c] = Σ_a X_a[n, c] @ R_a[c] (the box form) with the box sums on tensor cores too.

    Program = one (n, c) plane, held on chip (H_PAD x W_PAD). The narrow cells go one row lag at a
    time, the ROW_LAGS (cell, lag) pairs at row_lags_ptr in one loop that the compiler can pipeline
    (``_row_lag_products``: shifted input rows read from memory, exact products); the WIDE_CELLS cells
    at wide_ptr as X_a = V_a @ x, exact in its fp32 accumulator, with V_a the cell's 0/1 band of
    row lags (H_PAD x H_PAD, read from the table at bands_ptr), times their blocks at
    wide_blocks_ptr (``_wide_cell_product``). Column blocks (C, k', W_PAD, W_PAD): R_a at blocks_ptr;
    at wide_blocks_ptr R_a again, or with HALF_BOXES R_a·2^e_c in fp16 (e_c at exponents_ptr, read
    only then; ``_half_box_scales``).
    """
    n, c = tl.program_id(0), tl.program_id(1)
    plane = (n.to(tl.int64) * C + c) * (H * W)
    u = tl.arange(0, H_PAD)
    w = tl.arange(0, W_PAD)
    inside = (u < H)[:, None] & (w < W)[None, :]
    x = tl.load(x_ptr + plane + u[:, None] * W + w[None, :], mask=inside, other=0.0)
    bands = bands_ptr + u[:, None] * H_PAD + u[None, :]
    block_entries = c.to(tl.int64) * CELLS * (W_PAD * W_PAD) + w[:, None] * W_PAD + w[None, :]
    blocks = blocks_ptr + block_entries
    acc = tl.zeros((H_PAD, W_PAD), dtype=tl.float64 if PRECISION == "ieee" else tl.float32)
    for index in range(ROW_LAGS):
        cell, lag = tl.load(row_lags_ptr + 2 * index), tl.load(row_lags_ptr + 2 * index + 1)
        acc = _row_lag_products(acc, x_ptr + plane, tl.load(blocks + cell * (W_PAD * W_PAD)), u, w, lag, lag + 1,
                                inside, H, W, PRECISION, UPCAST)
    box_exponent, weight_exponent = _half_box_scales(x, exponents_ptr, c, BOX_BITS, SCALE_BITS, HALF_BOXES)
    acc = _times_powers_of_two(acc, box_exponent, weight_exponent, HALF_BOXES)
    for index in range(WIDE_CELLS):
        cell = tl.load(wide_ptr + index)
        box = _dot_step(tl.zeros((H_PAD, W_PAD), dtype=acc.dtype), tl.load(bands + cell * (H_PAD * H_PAD)), x,
                        PRECISION, UPCAST)
        acc = _wide_cell_product(acc, box, tl.load(wide_blocks_ptr + block_entries + cell * (W_PAD * W_PAD)),
                                 box_exponent, x.dtype, PRECISION, UPCAST, HI_LO, HALF_BOXES)
    acc = _times_powers_of_two(acc, -box_exponent, -weight_exponent, HALF_BOXES)
    tl.store(y_ptr + plane + u[:, None] * W + w[None, :], acc.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _plane_box_tma_kernel(x_desc, blocks_desc, wide_blocks_desc, exponents_ptr, bands_desc, y_desc, row_lags_ptr,
                          wide_ptr, C, CELLS, CENTRE, ROW_LAGS, WIDE_PAIRS, WIDE_CELLS, BOX_BITS, PRECISION: tl.constexpr,
                          UPCAST: tl.constexpr, HI_LO: tl.constexpr, HALF_BOXES: tl.constexpr,
                          SCALE_BITS: tl.constexpr, PLANES: tl.constexpr, H_PAD: tl.constexpr, W_PAD: tl.constexpr):
    """``_plane_box_kernel`` with every tile moved by the tensor-memory accelerator (TMA), for PLANES
    (1 or 2) images n of one channel c: the plane, its shifted copies for the narrow cells (rows
    outside the image arrive as zeros), the bands and the column blocks go from global to shared
    memory without passing through registers or the L1's load/store path (which ncu showed 79% busy
    for the plane box), and y goes back the same way. With two planes each column block and band
    comes in once for both.

    x_desc, y_desc: (B·C, H, W) with (1, H_PAD, W_PAD) tiles (planes past B·C, an odd B's last pair:
    zeros in, nothing out); blocks_desc, wide_blocks_desc: (C·k'·W_PAD, W_PAD) with (W_PAD, W_PAD)
    tiles; bands_desc: (k'·H_PAD, H_PAD) with (H_PAD, H_PAD) tiles.

    The work lists come from ``_plane_cells``: a centre cell of one row (CENTRE 1) takes the plane
    already on chip instead of a shifted copy; the first WIDE_PAIRS pairs of wide cells are mirror
    images (V_mirror = V_aᵀ), so one band tile serves both.
    """
    pair, c = tl.program_id(0), tl.program_id(1)
    plane0 = pair * PLANES * C + c
    plane1 = plane0 + C  # image n + 1, used with PLANES == 2
    x0 = x_desc.load([plane0, 0, 0]).reshape(H_PAD, W_PAD)
    acc0 = tl.zeros((H_PAD, W_PAD), dtype=tl.float64 if PRECISION == "ieee" else tl.float32)
    if PLANES == 2:
        x1 = x_desc.load([plane1, 0, 0]).reshape(H_PAD, W_PAD)
        acc1 = tl.zeros((H_PAD, W_PAD), dtype=acc0.dtype)
    if CENTRE:  # row_lags starts with (centre cell, lag 0): its shifted plane is the plane itself
        centre_block = blocks_desc.load([(c * CELLS + tl.load(row_lags_ptr)) * W_PAD, 0])
        acc0 = _dot_step(acc0, x0, centre_block, PRECISION, UPCAST)
        if PLANES == 2:
            acc1 = _dot_step(acc1, x1, centre_block, PRECISION, UPCAST)
    for index in range(CENTRE, ROW_LAGS):
        cell, lag = tl.load(row_lags_ptr + 2 * index), tl.load(row_lags_ptr + 2 * index + 1)
        block = blocks_desc.load([(c * CELLS + cell) * W_PAD, 0])
        acc0 = _dot_step(acc0, x_desc.load([plane0, lag, 0]).reshape(H_PAD, W_PAD), block, PRECISION, UPCAST)
        if PLANES == 2:
            acc1 = _dot_step(acc1, x_desc.load([plane1, lag, 0]).reshape(H_PAD, W_PAD), block, PRECISION, UPCAST)
    box_exponent0, weight_exponent = _half_box_scales(x0, exponents_ptr, c, BOX_BITS, SCALE_BITS, HALF_BOXES)
    acc0 = _times_powers_of_two(acc0, box_exponent0, weight_exponent, HALF_BOXES)
    if PLANES == 2:
        box_exponent1, _ = _half_box_scales(x1, exponents_ptr, c, BOX_BITS, SCALE_BITS, HALF_BOXES)
        acc1 = _times_powers_of_two(acc1, box_exponent1, weight_exponent, HALF_BOXES)
    for index in range(WIDE_PAIRS):
        cell, mirror = tl.load(wide_ptr + 2 * index), tl.load(wide_ptr + 2 * index + 1)
        band = bands_desc.load([cell * H_PAD, 0])
        block = wide_blocks_desc.load([(c * CELLS + cell) * W_PAD, 0])
        mirror_block = wide_blocks_desc.load([(c * CELLS + mirror) * W_PAD, 0])
        acc0 = _wide_cell(acc0, band, x0, block, box_exponent0, PRECISION, UPCAST, HI_LO, HALF_BOXES)
        acc0 = _wide_cell(acc0, tl.trans(band), x0, mirror_block, box_exponent0, PRECISION, UPCAST, HI_LO,
                          HALF_BOXES)
        if PLANES == 2:
            acc1 = _wide_cell(acc1, band, x1, block, box_exponent1, PRECISION, UPCAST, HI_LO, HALF_BOXES)
            acc1 = _wide_cell(acc1, tl.trans(band), x1, mirror_block, box_exponent1, PRECISION, UPCAST, HI_LO,
                              HALF_BOXES)
    for index in range(2 * WIDE_PAIRS, WIDE_CELLS):
        cell = tl.load(wide_ptr + index)
        band = bands_desc.load([cell * H_PAD, 0])
        block = wide_blocks_desc.load([(c * CELLS + cell) * W_PAD, 0])
        acc0 = _wide_cell(acc0, band, x0, block, box_exponent0, PRECISION, UPCAST, HI_LO, HALF_BOXES)
        if PLANES == 2:
            acc1 = _wide_cell(acc1, band, x1, block, box_exponent1, PRECISION, UPCAST, HI_LO, HALF_BOXES)
    acc0 = _times_powers_of_two(acc0, -box_exponent0, -weight_exponent, HALF_BOXES)
    y_desc.store([plane0, 0, 0], acc0.to(y_desc.dtype).reshape(1, H_PAD, W_PAD))
    if PLANES == 2:
        acc1 = _times_powers_of_two(acc1, -box_exponent1, -weight_exponent, HALF_BOXES)
        y_desc.store([plane1, 0, 0], acc1.to(y_desc.dtype).reshape(1, H_PAD, W_PAD))


@triton.jit
def _boundary_spectra_kernel(w_ptr, plus_ptr, minus_ptr, cells_ptr, out_ptr, CELLS: tl.constexpr,
                             BOUNDARIES: tl.constexpr, SPECTRUM: tl.constexpr, N_PAD: tl.constexpr,
                             S_BLOCK: tl.constexpr):
    """Ŝ[c, m] = (w_θ[c, plus_m] - w_θ[c, minus_m]) @ cells in fp64, rounded once to out's dtype
    (spectral.SpectrumFactors; rows -1 and CELLS of w_θ are zero): program (c, block) = channel c and
    S_BLOCK of the SPECTRUM = 2·Fp entries (real, then imaginary); w_θ (C, CELLS, CELLS), plus and minus
    (BOUNDARIES,), cells (CELLS, SPECTRUM), Ŝ (C, BOUNDARIES, SPECTRUM). A column b of the row
    differences at a time, gathered from w_θ, times cells' row b; the loop unrolled, so its loads go
    out together (offline for sm_90 at stage 1 K=101: 52 registers, 472 SASS instructions, against 168
    and 3328 for all 128 entries a program)."""
    c, block = tl.program_id(0), tl.program_id(1)
    m, s = tl.arange(0, N_PAD), block * S_BLOCK + tl.arange(0, S_BLOCK)
    boundaries = m < BOUNDARIES
    plus = tl.load(plus_ptr + m, mask=boundaries, other=-1)
    minus = tl.load(minus_ptr + m, mask=boundaries, other=CELLS)
    weights = w_ptr + c.to(tl.int64) * (CELLS * CELLS)
    spectra = tl.zeros((N_PAD, S_BLOCK), dtype=tl.float64)
    for b in tl.static_range(CELLS):
        difference = (tl.load(weights + plus * CELLS + b, mask=plus >= 0, other=0.0).to(tl.float64)
                      - tl.load(weights + minus * CELLS + b, mask=minus < CELLS, other=0.0).to(tl.float64))
        spectra += difference[:, None] * tl.load(cells_ptr + b * SPECTRUM + s)[None, :]
    out = out_ptr + c.to(tl.int64) * (BOUNDARIES * SPECTRUM) + m[:, None] * SPECTRUM + s[None, :]
    tl.store(out, spectra.to(out_ptr.dtype.element_ty), mask=boundaries[:, None])


@triton.jit
def _spectral_boundary_loads(scratch_rows, row, rows, offsets_ptr, spectra, index, fb, H: tl.constexpr,
                             F_PAD: tl.constexpr, F_USED: tl.constexpr, F_BLOCK: tl.constexpr):
    """Boundary j = index of the spectral box form on a block fb of F_BLOCK frequencies: the prefix
    spectrum's shifted rows P̂[clamp(h + p_j, 0, H)] (real, imaginary; (M, F_BLOCK)) and Ŝ_j's slice
    (real, imaginary; (1, F_BLOCK)). Padding rows (rows false) load nothing; the last block masks the
    frequencies from F_USED on.
    """
    source = tl.minimum(tl.maximum(row + tl.load(offsets_ptr + index), 0), H)
    reads = scratch_rows + (source * (2 * F_PAD))[:, None] + fb[None, :]
    if F_USED % F_BLOCK != 0:
        mask = rows[:, None] & (fb < F_USED)[None, :]
    else:
        mask = rows[:, None]
    p_real = tl.load(reads, mask=mask, other=0.0)
    p_imag = tl.load(reads + F_PAD, mask=mask, other=0.0)
    s_real = tl.load(spectra + index * (2 * F_PAD))[None, :]
    s_imag = tl.load(spectra + index * (2 * F_PAD) + F_PAD)[None, :]
    return p_real, p_imag, s_real, s_imag


@triton.jit
def _complex_multiply_add(out_real, out_imag, p_real, p_imag, s_real, s_imag):
    """out += s · p over complex numbers, as four fused multiply-adds."""
    out_real = tl.fma(s_real, p_real, out_real)
    out_real = tl.fma(-s_imag, p_imag, out_real)
    out_imag = tl.fma(s_real, p_imag, out_imag)
    out_imag = tl.fma(s_imag, p_real, out_imag)
    return out_real, out_imag


@triton.jit
def _spectral_boundary_sum(scratch_rows, row, rows, offsets_ptr, spectra, BOUNDARIES, fb, H: tl.constexpr,
                           F_PAD: tl.constexpr, F_USED: tl.constexpr, F_BLOCK: tl.constexpr):
    """Σ_j Ŝ_j ⊙ P̂[clamp(h + p_j, 0, H)] over the rows (M,) of a tile and a block fb of
    frequencies: (real, imaginary), each (M, F_BLOCK). The loop is unrolled by two (3% faster at stage
    1's K=101 on the H100, 2026-12-06; by four was no faster): two boundaries' loads in flight."""
    out_real = tl.zeros((row.shape[0], F_BLOCK), dtype=spectra.dtype.element_ty)
    out_imag = out_real
    for index in tl.range(0, BOUNDARIES, loop_unroll_factor=2):
        loaded = _spectral_boundary_loads(scratch_rows, row, rows, offsets_ptr, spectra, index, fb,
                                          H, F_PAD, F_USED, F_BLOCK)
        out_real, out_imag = _complex_multiply_add(out_real, out_imag, *loaded)
    return out_real, out_imag


@triton.jit
def _discard_lines(start, ENTRIES: tl.constexpr):
    """Drops the L2 lines of the ENTRIES fp32 values from start (128-byte aligned, a multiple of 32) without
    writing them back to memory (PTX ``discard.global.L2``, sm_80 on): scratch that nothing reads again."""
    lines = tl.arange(0, triton.next_power_of_2(ENTRIES // 32)) * 32
    tl.inline_asm_elementwise("discard.global.L2 [$1], 128;\n mov.u32 $0, 0;", "=r,l",
                              [start + tl.minimum(lines, ENTRIES - 32)], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _spectral_box_kernel(x_ptr, spectra_ptr, offsets_ptr, forward_ptr, inverse_ptr, scratch_ptr, y_ptr, B, C,
                         BOUNDARIES, H: tl.constexpr, W: tl.constexpr, PRECISION: tl.constexpr,
                         H_PAD: tl.constexpr, W_PAD: tl.constexpr, F_PAD: tl.constexpr, F_USED: tl.constexpr,
                         F_BLOCK: tl.constexpr, PLANES: tl.constexpr, DISCARD_SCRATCH: tl.constexpr):
    """y[n, c] = (Σ_j Ŝ_j[c] ⊙ (P @ F)[clamp(h + p_j, 0, H)]) @ G (the spectral box form,
    spectral.spectral_conv), fp32 or fp64.

    Program = PLANES (1 or 2) images n of one channel c, stacked along the rows of one on-chip tile
    (PLANES·H_PAD x W_PAD; two planes that pad to 32 make the M of 64 that Hopper's wgmma needs, and
    share Ŝ's loads). The column prefix is a product with a 0/1 lower triangle (block-diagonal over
    the planes; exact in tf32, no scan); times the forward real DFT F (forward_ptr: cos, then -sin,
    each Fᵀ (F_PAD, W_PAD)) it gives the prefix spectrum P̂, parked in the scratch: per plane H+1 rows
    of real then imaginary F_PAD, row s = P̂[s] and row 0 zero, so the row shifts clamp(h + p_j, 0, H)
    of the BOUNDARIES offsets p_j (offsets_ptr) are plain loads. The boundary loop accumulates the
    complex products with Ŝ (C, BOUNDARIES, 2, F_PAD at spectra_ptr) as four fused multiply-adds,
    F_BLOCK frequencies at a time: a block's rows of every plane on the SM stay in L1 across the
    boundaries, which all read nearly the same rows (the whole P̂ of three stage-1 programs did not
    fit the L1 their 64 KB of shared memory each leave). Each block's result times its slice of the
    inverse G (inverse_ptr: cos, then -sin, each Gᵀ (W_PAD, F_PAD)) is added to y. The bases come
    transposed so that the products' shared-memory operands (the contracted index contiguous) are
    written with 16-byte stores. Frequencies from F_USED on (spectral.stored_frequencies) are zero and
    never stored or read.

    x streams through L2 once (read and written first out), the scratch is kept there (evict last),
    and with DISCARD_SCRATCH its lines are dropped at the end instead of written back: B·C·(H+1)·2·F_PAD
    fp32 (85 MB at stage 1, more than the H100's 50 MB of L2) that went out to HBM and pushed x and the
    bases out (4-6% of the forward's time on the H100, bench/results/2026-12-07-h100-spectral-scratch-l2.md).
    """
    pair, c = tl.program_id(0), tl.program_id(1)
    u = tl.arange(0, PLANES * H_PAD)
    if PLANES == 1:
        row, slot = u, tl.zeros_like(u)
        rows = row < H
    else:
        row, slot = u % H_PAD, u // H_PAD                                  # each row's plane of the tile
        rows = (row < H) & (pair * PLANES + slot < B)
    w = tl.arange(0, W_PAD)
    f = tl.arange(0, F_PAD)
    inside = rows[:, None] & (w < W)[None, :]
    accumulate = tl.float64 if PRECISION == "ieee" else tl.float32
    first_plane = (pair * PLANES).to(tl.int64) * C + c                     # the tile's first plane
    x_rows = (first_plane * (H * W) + (slot * (C * H * W) + row * W))[:, None]
    x = tl.load(x_ptr + x_rows + w[None, :], mask=inside, other=0.0, eviction_policy="evict_first").to(accumulate)
    triangle = (row[None, :] <= row[:, None]) & (slot[None, :] == slot[:, None])
    prefix = _dot_step(tl.zeros(x.shape, dtype=accumulate), triangle.to(accumulate), x, PRECISION, False, True)
    forward = forward_ptr + f[:, None] * W_PAD + w[None, :]
    zeros = tl.zeros((PLANES * H_PAD, F_PAD), dtype=accumulate)
    real = _dot_step(zeros, prefix, tl.trans(tl.load(forward)), PRECISION, False)
    imag = _dot_step(zeros, prefix, tl.trans(tl.load(forward + F_PAD * W_PAD)), PRECISION, False)
    plane_entries: tl.constexpr = (H + 1) * 2 * F_PAD                     # a plane's scratch
    scratch = scratch_ptr + first_plane * plane_entries
    tl.store(scratch + (tl.arange(0, PLANES) * (C * plane_entries))[:, None] + tl.arange(0, 2 * F_PAD)[None, :],
             tl.zeros((PLANES, 2 * F_PAD), dtype=accumulate))                 # P̂[0] = 0
    scratch_rows = scratch + (slot * (C * plane_entries))[:, None]         # each row's plane, (M, 1)
    prefix_rows = scratch_rows + ((row + 1) * (2 * F_PAD))[:, None] + f[None, :]
    if F_USED < F_PAD:
        spectrum = rows[:, None] & (f < F_USED)[None, :]
    else:
        spectrum = rows[:, None]
    tl.store(prefix_rows, real, mask=spectrum, eviction_policy="evict_last")
    tl.store(prefix_rows + F_PAD, imag, mask=spectrum, eviction_policy="evict_last")
    tl.debug_barrier()
    y = tl.zeros(x.shape, dtype=accumulate)
    for block in range((F_USED + F_BLOCK - 1) // F_BLOCK):
        fb = block * F_BLOCK + tl.arange(0, F_BLOCK)
        spectra = spectra_ptr + c.to(tl.int64) * (BOUNDARIES * 2 * F_PAD) + fb
        out_real, out_imag = _spectral_boundary_sum(scratch_rows, row, rows, offsets_ptr, spectra, BOUNDARIES,
                                                    fb, H, F_PAD, F_USED, F_BLOCK)
        inverse = inverse_ptr + w[:, None] * F_PAD + fb[None, :]
        y = _dot_step(y, out_real, tl.trans(tl.load(inverse)), PRECISION, False)
        y = _dot_step(y, out_imag, tl.trans(tl.load(inverse + W_PAD * F_PAD)), PRECISION, False)
    tl.store(y_ptr + x_rows + w[None, :], y.to(y_ptr.dtype.element_ty), mask=inside, eviction_policy="evict_first")
    if DISCARD_SCRATCH:
        tl.debug_barrier()                                                 # every warp done reading it
        for plane in tl.static_range(PLANES):
            _discard_lines(scratch + plane * (C * plane_entries), plane_entries)


@triton.jit
def _row_toeplitz_kernel(x_ptr, blocks_ptr, cells_ptr, y_ptr, B, C, H: tl.constexpr, W: tl.constexpr, CELLS,
                         LAG_LO, LAG_HI, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                         ROWS: tl.constexpr, W_PAD: tl.constexpr):
    """y[n, c, h] = Σ_{h'} x[n, c, h'] @ R_{cell(h' - h)}[c] (the Toeplitz form by image rows).

    Program = BLOCK_M images x ROWS output rows h0.. of channel c: a GEMM over the input rows h' in
    the kernel's vertical reach [LAG_LO, LAG_HI] of those rows. Its B operand for input row h' is the
    ROWS column blocks R_{cell(h' - h)} side by side (W_PAD x ROWS·W_PAD), plain tile loads of the
    channel's (k', W_PAD, W_PAD) blocks, which stay in L1 (cells_ptr maps a lag -(H-1)..H-1 to its
    cell, CELLS beyond the kernel: a zero block). The same multiply-adds as the lag-gather Toeplitz
    kernel (W_PAD per input row and output pixel), without a gather per element.
    """
    pid_h, c, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    images = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    h0 = pid_h * ROWS
    columns = tl.arange(0, ROWS * W_PAD)
    r, w = columns // W_PAD, columns % W_PAD
    v = tl.arange(0, W_PAD)
    x_rows = x_ptr + ((images.to(tl.int64) * C + c) * (H * W))[:, None] + v[None, :]
    a_mask = (images < B)[:, None] & (v < W)[None, :]
    blocks = blocks_ptr + c.to(tl.int64) * CELLS * (W_PAD * W_PAD) + (v * W_PAD)[:, None]
    acc = tl.zeros((BLOCK_M, ROWS * W_PAD), dtype=tl.float64 if PRECISION == "ieee" else tl.float32)
    for source in range(tl.maximum(h0 + LAG_LO, 0), tl.minimum(h0 + ROWS + LAG_HI, H)):
        a = tl.load(x_rows + source * W, mask=a_mask, other=0.0)
        cell = tl.load(cells_ptr + tl.minimum(tl.maximum(source - h0 - r, 1 - H), H - 1) + (H - 1))
        offsets = tl.max_contiguous(tl.multiple_of(cell * (W_PAD * W_PAD) + w, [W_PAD]), [W_PAD])
        b = tl.load(blocks + offsets[None, :], mask=(cell < CELLS)[None, :], other=0.0)
        acc = _dot_step(acc, a, b, PRECISION, UPCAST)
    rows = h0 + r
    out = y_ptr + ((images.to(tl.int64) * C + c) * (H * W))[:, None] + (rows * W + w)[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=(images < B)[:, None] & ((rows < H) & (w < W))[None, :])


@triton.jit
def _box_products_kernel(dy_ptr, prefix_ptr, lo_ptr, hi_ptr, out_ptr, B, C, H: tl.constexpr, W: tl.constexpr,
                         CELLS, PER_SPLIT, PRECISION: tl.constexpr, UPCAST: tl.constexpr, HI_LO: tl.constexpr,
                         BLOCK_W: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[s, c, a, w, v] = Σ_{(n, h) in split s} dy[n, c, h, w] · X_a[n, c, h, v] (see toeplitz.py).

    Program = channel c, cell a, one (BLOCK_W x BLOCK_W) tile of (w, v), one split of the B·H
    rows: a GEMM dYᵀ @ X_a, with X_a = prefix[h + hi_a] - prefix[h + lo_a] formed on the fly
    from the fp32 column prefix sum. HI_LO (bf16/fp16) splits X_a into two half-precision
    parts, so the products keep about 16 bits of X_a.
    """
    pid, split, tile = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    c, cell = pid // CELLS, pid % CELLS
    lo, hi = tl.load(lo_ptr + cell), tl.load(hi_ptr + cell)
    tiles_v = tl.cdiv(W, BLOCK_W)
    w = (tile // tiles_v) * BLOCK_W + tl.arange(0, BLOCK_W)
    v = (tile % tiles_v) * BLOCK_W + tl.arange(0, BLOCK_W)
    k_begin = split * PER_SPLIT
    k_end = tl.minimum(k_begin + PER_SPLIT, B * H)
    acc = tl.zeros((BLOCK_W, BLOCK_W), dtype=tl.float64 if PRECISION == "ieee" else tl.float32)
    for k0 in range(k_begin, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        n, h = k // H, k % H
        plane = n.to(tl.int64) * C + c
        inside = (k < k_end)[:, None]
        grad = tl.load(dy_ptr + plane[:, None] * (H * W) + h[:, None] * W + w[None, :],
                       mask=inside & (w < W)[None, :], other=0.0)
        columns = prefix_ptr + plane[:, None] * ((H + 1) * W) + v[None, :]
        box_mask = inside & (v < W)[None, :]
        box = _prefix_rows(columns, h, hi, H, W, box_mask) - _prefix_rows(columns, h, lo, H, W, box_mask)
        grad_t = tl.trans(grad)
        if PRECISION == "ieee":  # fp64: no tensor-core dot
            acc += tl.sum(grad_t.to(tl.float64)[:, :, None] * box[None, :, :], axis=1)
        elif HI_LO:
            box_hi = box.to(dy_ptr.dtype.element_ty)
            box_lo = (box - box_hi.to(tl.float32)).to(dy_ptr.dtype.element_ty)
            if UPCAST:  # the interpreter's dot mishandles bf16/fp16; their products are exact in fp32
                grad_t, box_hi, box_lo = grad_t.to(tl.float32), box_hi.to(tl.float32), box_lo.to(tl.float32)
            acc = tl.dot(grad_t, box_hi, acc)
            acc = tl.dot(grad_t, box_lo, acc)
        else:
            acc = _dot_step(acc, grad_t, box, PRECISION, False)
    out = out_ptr + ((split * C + c) * CELLS + cell).to(tl.int64) * (W * W) + w[:, None] * W + v[None, :]
    tl.store(out, acc, mask=(w < W)[:, None] & (v < W)[None, :])


@triton.jit
def _column_prefix_kernel(x_ptr, out_ptr, H: tl.constexpr, W: tl.constexpr, BLOCK_H: tl.constexpr,
                          BLOCK_W: tl.constexpr):
    """out[n, c, u, w] = Σ_{h<u} x[n, c, h, w] in fp32 (fp64 for fp64) for u = 0..H.

    Program = one (n, c) plane, one BLOCK_W strip of columns; rows go BLOCK_H at a time
    with the running column sums carried between chunks.
    """
    plane, strip = tl.program_id(0).to(tl.int64), tl.program_id(1)
    acc_dtype = out_ptr.dtype.element_ty
    w = strip * BLOCK_W + tl.arange(0, BLOCK_W)
    rows = tl.arange(0, BLOCK_H)
    source = x_ptr + plane * (H * W)
    target = out_ptr + plane * ((H + 1) * W)
    tl.store(target + w, tl.zeros((BLOCK_W,), dtype=acc_dtype), mask=w < W)
    carry = tl.zeros((BLOCK_W,), dtype=acc_dtype)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + rows
        inside = (h < H)[:, None] & (w < W)[None, :]
        tile = tl.load(source + h[:, None] * W + w[None, :], mask=inside, other=0.0).to(acc_dtype)
        tl.store(target + (h + 1)[:, None] * W + w[None, :], tl.cumsum(tile, axis=0) + carry[None, :], mask=inside)
        carry += tl.sum(tile, axis=0)


@triton.jit
def _column_blocks_kernel(w_ptr, column_cells_ptr, copies_ptr, out_ptr, half_ptr, exponents_ptr, CELLS,
                          W: tl.constexpr, W_PAD: tl.constexpr, HALF_COPY: tl.constexpr, ROUNDED: tl.constexpr,
                          CELLS_PAD: tl.constexpr, SCALE_BITS: tl.constexpr):
    """out[c, a, q, p] = w[c, a, column_cells[q - p + W - 1]] for q, p < W, else 0 (toeplitz.column_blocks).

    Program = one (c, a): the (W_PAD, W_PAD) horizontal Toeplitz block of w_θ's row a, cast to
    out's dtype. column_cells maps a column lag -(W-1)..W-1 to its cell, CELLS beyond the kernel.
    HALF_COPY: the block rounded to ROUNDED (out's dtype) and scaled by 2^e_c into fp16 at half_ptr,
    with e_c from channel c's largest rounded weight, written to exponents_ptr[c]
    (toeplitz.half_block_exponents and toeplitz.half_blocks); copies_ptr[a] says which cell a gets:
    1 the out block, 2 the fp16 one, 3 both.
    """
    c, a = tl.program_id(0).to(tl.int64), tl.program_id(1)
    q = tl.arange(0, W_PAD)[:, None]
    p = tl.arange(0, W_PAD)[None, :]
    inside = (q < W) & (p < W)
    cell = tl.load(column_cells_ptr + tl.where(inside, q - p + W - 1, 0), mask=inside, other=CELLS)
    row = w_ptr + (c * CELLS + a) * CELLS
    value = tl.load(row + cell, mask=inside & (cell < CELLS), other=0.0)
    block = (c * CELLS + a) * (W_PAD * W_PAD) + q * W_PAD + p
    copies = tl.load(copies_ptr + a) if HALF_COPY else 1
    if copies & 1:
        tl.store(out_ptr + block, value.to(out_ptr.dtype.element_ty))
    if HALF_COPY:
        k = tl.arange(0, CELLS_PAD)
        weights = tl.load(w_ptr + c * CELLS * CELLS + k[:, None] * CELLS + k[None, :],
                          mask=(k < CELLS)[:, None] & (k < CELLS)[None, :], other=0.0)
        amax = tl.max(tl.max(tl.abs(weights.to(ROUNDED).to(tl.float32)), axis=1), axis=0)
        exponent = _clamp_exponent(SCALE_BITS - _float_exponent(amax))
        if copies & 2:
            tl.store(half_ptr + block, (value.to(ROUNDED).to(tl.float32) * _power_of_two(exponent)).to(tl.float16))
        if a == 0:
            tl.store(exponents_ptr + c, exponent)


INTERPRETED = not isinstance(_taps_kernel, triton.runtime.JITFunction)
"""True when TRITON_INTERPRET=1 was set before triton was imported: kernels run on CPU tensors too."""


def _offsets_tensor(offsets: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return device_constant(("int32 offsets", offsets), device, lambda: torch.tensor(offsets, dtype=torch.int32))


def _cell_lag_tensors(grid: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(lo, hi, k'): each kernel cell's lag range [lo, hi) (toeplitz.cell_lag_ranges) as int32 tensors."""
    ranges = cell_lag_ranges(tuple(grid))
    return (_offsets_tensor(tuple(lo for lo, _ in ranges), device),
            _offsets_tensor(tuple(hi for _, hi in ranges), device), len(ranges))


def _cells_by_width(grid: Sequence[int], height: int, narrow_rows: int
                    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(cells within an image of ``height`` rows, those of at most ``narrow_rows`` rows, the wider
    ones): the box kernels skip cells whose lags miss the image and take narrow ones row by row."""
    ranges = cell_lag_ranges(tuple(grid))
    reach = cells_within_reach(tuple(grid), height)
    narrow = tuple(cell for cell in reach if ranges[cell][1] - ranges[cell][0] <= narrow_rows)
    return reach, narrow, tuple(cell for cell in reach if cell not in narrow)


class PlaneCells(NamedTuple):
    """The plane box's work list (``_plane_cells``). row_lags: the (cell, lag) pairs of the cells taken
    row by row, flattened, int32, the centre's (cell, 0) first where ``centre`` (1, else 0); wide: the
    wider cells, int32, the first ``mirror_pairs`` pairs of them mirror images (lags [lo, hi) and
    [1 - hi, 1 - lo): V_mirror = V_aᵀ)."""

    row_lags: torch.Tensor
    wide: torch.Tensor
    centre: int
    mirror_pairs: int


def _plane_cells(grid: tuple[int, ...], height: int, row_cells: int, device: torch.device,
                 reuse_tiles: bool = True) -> PlaneCells:
    """The plane box's work list for an image of ``height`` rows: the cells of at most ``row_cells``
    rows lag by lag (lags that miss the image left out), the wider cells within reach. With
    ``reuse_tiles`` ordered so the TMA kernel can reuse what it holds: the one-row centre first (its
    shifted plane is the plane), mirror images in pairs (one band tile for both)."""
    _, narrow, wide = _cells_by_width(grid, height, row_cells)
    ranges = cell_lag_ranges(grid)
    lags = [(cell, lag) for cell in narrow for lag in range(*ranges[cell]) if abs(lag) < height]
    centre = int(reuse_tiles and any(lag == 0 and ranges[cell] == (0, 1) for cell, lag in lags))
    if centre:
        lags.sort(key=lambda pair: pair[1] != 0)
    pairs = [(cell, mirror) for cell in wide for mirror in wide
             if reuse_tiles and cell < mirror and ranges[mirror] == (1 - ranges[cell][1], 1 - ranges[cell][0])]
    paired = {cell for pair in pairs for cell in pair}
    order = [cell for pair in pairs for cell in pair] + [cell for cell in wide if cell not in paired]
    return PlaneCells(_offsets_tensor(tuple(value for pair in lags for value in pair), device),
                      _offsets_tensor(tuple(order), device), centre, len(pairs))


def _plane_blocks(height: int, width: int) -> tuple[int, int]:
    """(BLOCK_H, BLOCK_W): powers of two holding the (H+1, W+1) SAT."""
    return triton.next_power_of_2(height + 1), triton.next_power_of_2(width + 1)


def _warps_for_plane(num_warps: int, plane_entries: int) -> int:
    """At least enough warps that building a whole SAT plane takes <= 64 registers a thread."""
    return max(num_warps, min(16, plane_entries // (64 * 32)))


def _output_dtype(dtype: torch.dtype) -> torch.dtype:
    """Triton's interpreter truncates fp32 -> bf16/fp16 instead of rounding: there, kernels write fp32."""
    return accumulate_dtype(dtype) if INTERPRETED else dtype


def _upcast(dtype: torch.dtype) -> bool:
    return INTERPRETED and dtype in (torch.bfloat16, torch.float16)


def _dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 as three TF32 products (about fp32-exact), or as one where the
    user lets fp32 matmuls use TF32 (``torch.set_float32_matmul_precision("high")`` or "medium");
    fp64 exact; bf16/fp16 native tensor cores (exact products, fp32 sums)."""
    if dtype == torch.float32:
        return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return {torch.float64: "ieee"}.get(dtype, "tf32")


def sat_taps_triton(x: torch.Tensor, row_offsets: Sequence[int], col_offsets: Sequence[int],
                    coeffs: torch.Tensor, tile_elements: int = 256, num_warps: int = 2,
                    col_chunk: int = 8) -> torch.Tensor:
    """Triton twin of ``sat.sat_taps``: x (B, C, H, W), coeffs (C, n_rows, n_cols) -> (B, C, H, W).

    A program holds tiles of about ``tile_elements`` outputs (BLOCK_C planes x TILE_H rows) and
    combines SAT rows for ``col_chunk`` column offsets at a time (a power of two): each SAT row is
    read n_cols / col_chunk times instead of n_cols, for col_chunk x the accumulator registers.
    On the H100 (bench/results/2026-11-25-h100-forms-candidates.md) chunks of 8 ran stage 1
    (56x56) 0.47 vs 0.62 ms (K=51) and 0.79 vs 0.94 ms (K=101) against chunks of 1, and stage 2
    within 1% of them or faster; chunks of 4 were slower than 1.
    """
    x = x.contiguous()
    batch, channels, height, width = x.shape
    acc = accumulate_dtype(x.dtype)
    block_h, block_w = _plane_blocks(height, width)
    tile_h = max(1, min(block_h, tile_elements // block_w))
    block_c = max(1, min(triton.next_power_of_2(channels), tile_elements // (tile_h * block_w)))
    programs = batch * triton.cdiv(channels, block_c)
    sat = torch.empty(batch * channels * (height + 1) * block_w, device=x.device, dtype=acc)
    parked = torch.empty(programs * block_c * col_chunk * tile_h * block_w, device=x.device, dtype=acc)
    y = torch.empty_like(x, dtype=_output_dtype(x.dtype))
    _taps_kernel[(programs,)](
        x, sat, parked, coeffs.to(acc).contiguous(), _offsets_tensor(tuple(row_offsets), x.device),
        _offsets_tensor(tuple(col_offsets), x.device), y, channels, height, width,
        len(row_offsets), len(col_offsets), ACC_FP64=acc == torch.float64,
        BLOCK_C=block_c, BLOCK_H=block_h, BLOCK_W=block_w, TILE_H=tile_h, COL_CHUNK=col_chunk,
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


def toeplitz_tile(dtype: torch.dtype, height: int, width: int) -> tuple[int, int, int, int]:
    """``toeplitz_conv_triton``'s default (block_m, block_n, block_k, num_stages) at 4 warps
    (bench/bench_forms.py, H100): 16-bit 64 images x 128 pixels (64 for planes up to 256 pixels) x 32
    deep, 3 stages; fp32 (three TF32 products) 32 x 64 x 32 (16 deep for planes up to 256 pixels:
    58 vs 70 µs at 14x14), 2 stages."""
    reduced, small_plane = dtype in (torch.bfloat16, torch.float16), height * width <= 256
    return (64 if reduced else 32, 128 if reduced and not small_plane else 64,
            16 if not reduced and small_plane else 32, 3 if reduced else 2)


def toeplitz_conv_triton(x: torch.Tensor, kernel: torch.Tensor, lag_reach: tuple[int, int] | None = None,
                         block_m: int | None = None, block_n: int | None = None, block_k: int | None = None,
                         num_warps: int = 4, num_stages: int | None = None) -> torch.Tensor:
    """Triton twin of ``toeplitz.toeplitz_conv``: x (B, C, H, W), Kc (C, 2H-1, 2W-1) in x.dtype -> (B, C, H, W).

    ``lag_reach`` (lo, hi): the vertical lags where Kc is non-zero (default all); rows beyond are skipped.
    Default tiles: ``toeplitz_tile``.
    """
    tile = toeplitz_tile(x.dtype, x.shape[-2], x.shape[-1])
    block_m, block_n, block_k, num_stages = (given or default for given, default in
                                             zip((block_m, block_n, block_k, num_stages), tile))
    x = x.contiguous()
    batch, channels, height, width = x.shape
    lo, hi = lag_reach or (1 - height, height - 1)
    if x.dtype == torch.float64:
        block_m, block_n, block_k = 16, 16, 16  # the fp64 fallback holds a (BLOCK_M, BLOCK_K, BLOCK_N) product
    block_m = max(16, min(block_m, triton.next_power_of_2(batch)))
    y = torch.empty_like(x, dtype=_output_dtype(x.dtype))
    launch = (triton.cdiv(height * width, block_n), channels, triton.cdiv(batch, block_m))
    _toeplitz_kernel[launch](x, kernel.to(x.dtype).contiguous(), y, batch, channels, height, width, lo, hi,
                             PRECISION=_dot_precision(x.dtype), UPCAST=_upcast(x.dtype), BLOCK_M=block_m,
                             BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
    return y.to(x.dtype)


def box_conv_tile(dtype: torch.dtype, padded: int) -> tuple[int, int, int]:
    """``box_conv_triton``'s default (block_m, num_warps, num_stages) for planes padded to ``padded``
    columns. From H100 sweeps (bench/results/2026-11-25-h100-forms-plane-box.md): fp32 on planes up
    to 32 wide 128 rows, 8 warps, one stage (stage 2: 0.146 vs 0.164 ms), wider 32 rows, 2 warps,
    3 stages (stage 1: 0.432 vs 0.515 ms for 128/8/1); 16-bit 128 rows, 4 warps, one stage
    (bench/results/2026-11-25-h100-forms-narrow-split.md)."""
    if dtype in (torch.bfloat16, torch.float16):
        return 128, 4, 1
    return (128, 8, 1) if padded <= 32 else (32, 2, 3)


def box_conv_triton(x: torch.Tensor, blocks: torch.Tensor, grid: Sequence[int], block_m: int | None = None,
                    num_warps: int | None = None, num_stages: int | None = None,
                    precision: str | None = None) -> torch.Tensor:
    """Triton twin of ``toeplitz.box_conv``: x (B, C, H, W), R (C, k', Wp, Wp) in x.dtype -> (B, C, H, W).

    A program computes ``block_m`` image rows (n, h) of one channel; cells whose lags miss the
    image entirely are skipped. ``precision``: tl.dot's input precision for fp32 (default "tf32x3").
    Default tiles: ``box_conv_tile``.
    """
    x = x.contiguous()
    batch, channels, height, width = x.shape
    block_m, num_warps, num_stages = (given or default for given, default in
                                      zip((block_m, num_warps, num_stages), box_conv_tile(x.dtype, blocks.shape[-1])))
    prefix = column_prefix_triton(x)
    lags_lo, lags_hi, cells = _cell_lag_tensors(grid, x.device)
    reach, narrow, wide = _cells_by_width(grid, height, 1)
    narrow, wide = _offsets_tensor(narrow, x.device), _offsets_tensor(wide, x.device)
    if x.dtype == torch.float64:
        block_m = 16  # the fp64 fallback holds a (BLOCK_M, Wp, Wp) product
    block_m = max(16, min(block_m, triton.next_power_of_2(batch * height)))
    y = torch.empty_like(x, dtype=_output_dtype(x.dtype))
    _box_conv_kernel[(triton.cdiv(batch * height, block_m), channels)](
        x, prefix, blocks.to(x.dtype).contiguous(), lags_lo, lags_hi, narrow, wide, y, batch, channels, height,
        width, cells, reach[0], reach[-1] + 1, narrow.numel(), wide.numel(),
        PRECISION=precision or _dot_precision(x.dtype), UPCAST=_upcast(x.dtype),
        HI_LO=x.dtype in (torch.bfloat16, torch.float16), BLOCK_M=block_m,
        W_PAD=blocks.shape[-1], num_warps=num_warps, num_stages=num_stages)
    return y.to(x.dtype)


def _band_table(grid: tuple[int, ...], padded: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(k', P, P) 0/1 bands V_a[h, u] = [lo_a <= u - h < hi_a] in ``dtype``, cached per device."""
    def build() -> torch.Tensor:
        lags = torch.arange(padded)[None, :] - torch.arange(padded)[:, None]
        return torch.stack([(lags >= lo) & (lags < hi) for lo, hi in cell_lag_ranges(grid)]).to(dtype)

    return device_constant(("plane box bands", grid, padded, dtype), device, build)


def tma_rows_align(width: int, dtype: torch.dtype) -> bool:
    """Whether rows of ``width`` entries are whole 16-byte units, as TMA moves them: W = 56 in bf16 yes, 28 no."""
    return width * dtype.itemsize % 16 == 0


def tma_applies(x: torch.Tensor) -> bool:
    """Whether the tensor-memory accelerator can move x's (H, W) planes: a Hopper-or-newer GPU (or the
    interpreter), 16-byte aligned rows (``tma_rows_align``) and data."""
    aligned = tma_rows_align(x.shape[-1], x.dtype) and x.data_ptr() % 16 == 0
    if x.device.type == "cuda":
        return aligned and torch.cuda.get_device_capability(x.device)[0] >= 9
    return aligned and INTERPRETED


class PlaneBlocks(NamedTuple):
    """The plane box's weights: R (C, k', Wp, Wp) in x's dtype for the row-by-row cells and, for
    ``half_boxes_apply`` dtypes, R·2^e_c in fp16 with the exponents e_c (C,) int32 for the wide cells.
    ``row_cells``: where set, R holds only the cells of at most that many rows and the fp16 copy only
    the wider ones (``plane_blocks_triton`` writes no block the plane box will not read); None: both
    hold every cell."""

    blocks: torch.Tensor
    half: torch.Tensor | None = None
    exponents: torch.Tensor | None = None
    row_cells: int | None = None


def half_boxes_apply(dtype: torch.dtype) -> bool:
    """Whether the plane box takes a wide cell's box sum as one fp16 product (scaled into range) rather
    than a bf16/fp16 hi/lo pair: for bf16, whose own output rounding (2^-9) is 4x fp16's rounding of
    the box (2^-11), so y's error stays within bf16's; not for fp16, where they are equal."""
    return dtype == torch.bfloat16


def plane_blocks_triton(weight: torch.Tensor, grid: Sequence[int], width: int, dtype: torch.dtype,
                        row_cells: int | None = 1) -> PlaneBlocks:
    """w_θ (C, 1, k', k') -> ``PlaneBlocks`` in one kernel: ``column_blocks_triton`` and, where
    ``half_boxes_apply``, its fp16 copy scaled per channel (toeplitz.half_blocks). With the copy,
    ``row_cells`` is the plane box's (cells of at most that many rows go row by row): R is written
    only for those cells and the copy only for the others, half the bytes (None: both for every cell)."""
    if not half_boxes_apply(dtype):
        return PlaneBlocks(column_blocks_triton(weight, grid, width, dtype))
    return PlaneBlocks(*_column_blocks(weight, grid, width, dtype, half_copy=True, row_cells=row_cells), row_cells)


def _as_plane_blocks(blocks: torch.Tensor | PlaneBlocks, dtype: torch.dtype, half_boxes: bool) -> PlaneBlocks:
    """PlaneBlocks in ``dtype``; from R alone, its fp16 copy by the torch twin (as the kernel: the
    exponents come from R's entries, which can only scale differently, exactly, by powers of two)."""
    if not isinstance(blocks, PlaneBlocks):
        blocks = PlaneBlocks(blocks)
    rounded = blocks.blocks.to(dtype).contiguous()
    if not half_boxes:
        if blocks.row_cells is not None:
            raise ValueError("these PlaneBlocks hold R only for cells of at most "
                             f"{blocks.row_cells} rows; without half boxes the wide cells need it too")
        return PlaneBlocks(rounded)
    if blocks.half is not None:
        return PlaneBlocks(rounded, blocks.half, blocks.exponents, blocks.row_cells)
    exponents = half_block_exponents(rounded)
    return PlaneBlocks(rounded, half_blocks(rounded, exponents).contiguous(), exponents)


def plane_box_conv_triton(x: torch.Tensor, blocks: torch.Tensor | PlaneBlocks, grid: Sequence[int],
                          num_warps: int = 4, num_stages: int | None = None, row_cells: int = 1,
                          tma: bool | None = None, half_boxes: bool | None = None,
                          max_registers: int | None = None, images_per_program: int = 2,
                          reuse_tiles: bool = True) -> torch.Tensor:
    """Triton twin of ``toeplitz.box_conv`` with the box sums as tensor-core products:
    x (B, C, H, W), R (C, k', Wp, Wp) or ``PlaneBlocks`` -> (B, C, H, W).

    A program holds one (H, W) plane padded to powers of two, so it suits planes up to 64 a side;
    cells whose lags miss the image are skipped, cells of at most ``row_cells`` rows go row by row.
    ``tma``: move the tiles by TMA (``_plane_box_tma_kernel``; default where ``tma_applies``) or by
    loads through registers (``_plane_box_kernel``). ``half_boxes``: a wide cell's box sum times R_a
    as one fp16 product (default where ``half_boxes_apply``; 16-bit inputs only) rather than a hi/lo pair.
    ``max_registers``: ptxas' register cap per thread (default none). ``images_per_program`` (TMA
    only): 1 or 2 planes of a channel per program, sharing its blocks and bands (default 2: H200
    stage 1 bf16 0.077 / 0.096 ms at K=51 / 101 against 0.081 / 0.100 for one,
    bench/results/2026-12-04-h200-forms-image-pairs.md). ``reuse_tiles`` (TMA only): the one-row centre
    cell's product takes the plane on chip, mirror-image wide cells share one band tile (``_plane_cells``).
    Defaults from
    sweeps at stage 1 bf16: 4 warps, one-row cells row by row; TMA with 2 stages, 0.101 / 0.129 ms at
    K=51 / 101 on the H200 against 0.113 / 0.144 for the register loads at their best, one stage
    (bench/results/2026-12-03-h200-forms-tma.md). The register-load kernel on the H100: 0.125 ms at
    K=51 against 0.146 with the bands built in registers and 0.269 for the Toeplitz form
    (bench/results/2026-11-25-h100-forms-plane-box-bands.md).
    """
    x = x.contiguous()
    batch, channels, height, width = x.shape
    tma = tma_applies(x) if tma is None else tma
    half_boxes = (half_boxes_apply(x.dtype) if half_boxes is None else half_boxes) and x.dtype in (torch.bfloat16,
                                                                                                  torch.float16)
    num_stages = num_stages or (2 if tma else 1)
    cells = len(grid)
    work = _plane_cells(tuple(grid), height, row_cells, x.device, reuse_tiles)
    box_bits = max(hi - lo for lo, hi in cell_lag_ranges(tuple(grid))).bit_length()  # 2^bits > rows of any cell
    padded, w_pad = padded_width(height), padded_width(width)
    bands = _band_table(tuple(grid), padded, x.dtype, x.device)
    blocks, half, exponents, blocks_row_cells = _as_plane_blocks(blocks, x.dtype, half_boxes)
    if blocks_row_cells not in (None, row_cells):
        raise ValueError(f"the PlaneBlocks were written for row_cells={blocks_row_cells}, got {row_cells}")
    wide_blocks = half if half_boxes else blocks
    exponents = exponents if half_boxes else work.wide  # any int32 tensor: the kernels read it only with half_boxes
    y = torch.empty_like(x, dtype=_output_dtype(x.dtype))
    options = dict(PRECISION=_dot_precision(x.dtype), UPCAST=_upcast(x.dtype),
                   HI_LO=x.dtype in (torch.bfloat16, torch.float16), HALF_BOXES=half_boxes,
                   SCALE_BITS=HALF_SCALE_BITS, H_PAD=padded, W_PAD=w_pad, num_warps=num_warps,
                   num_stages=num_stages, **({"maxnreg": max_registers} if max_registers else {}))
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        planes = batch * channels
        _plane_box_tma_kernel[(triton.cdiv(batch, images_per_program), channels)](
            TensorDescriptor.from_tensor(x.view(planes, height, width), [1, padded, w_pad]),
            TensorDescriptor.from_tensor(blocks.view(-1, w_pad), [w_pad, w_pad]),
            TensorDescriptor.from_tensor(wide_blocks.view(-1, w_pad), [w_pad, w_pad]), exponents,
            TensorDescriptor.from_tensor(bands.view(-1, padded), [padded, padded]),
            TensorDescriptor.from_tensor(y.view(planes, height, width), [1, padded, w_pad]),
            work.row_lags, work.wide, channels, cells, work.centre, work.row_lags.numel() // 2, work.mirror_pairs,
            work.wide.numel(), box_bits, PLANES=images_per_program, **options)
    else:
        _plane_box_kernel[(batch, channels)](
            x, blocks, wide_blocks, exponents, bands, work.row_lags, work.wide, y, channels, height, width, cells,
            work.row_lags.numel() // 2, work.wide.numel(), box_bits, **options)
    return y.to(x.dtype)


class RowToeplitzTile(NamedTuple):
    """``row_toeplitz_triton``'s launch: images per program, output rows per program, warps, pipeline
    stages, and ptxas' register cap per thread (None: no cap)."""

    block_m: int
    rows: int
    num_warps: int
    num_stages: int
    max_registers: int | None


def row_toeplitz_tile(dtype: torch.dtype, width: int) -> RowToeplitzTile:
    """``row_toeplitz_triton``'s defaults: enough output rows for 128 tile columns, 4 warps, 2 stages;
    64 images for 16-bit inputs, 32 for fp32 (three TF32 products each; 64 images took 180-224
    registers). From the H200 sweep (bench/results/2026-12-03-h200-forms-candidates.md): bf16 stage 2
    0.052 ms (0.054 with 3 stages, 0.056 with 256 columns and 8 warps), fp32 stage 3 0.044 ms with 32
    images against 0.110 with 64. 16-bit on 32-column planes caps registers at 96: 5 programs per SM,
    one wave, no spills offline; H200 stage 2 bf16 0.035 against 0.044 ms
    (bench/results/2026-12-03-h200-layers-tma.md). At 16 columns (stage 3) the cap would spill."""
    reduced, padded = dtype in (torch.bfloat16, torch.float16), padded_width(width)
    return RowToeplitzTile(64 if reduced else 32, max(1, 128 // padded), 4, 2,
                           96 if reduced and padded == 32 else None)


def row_toeplitz_triton(x: torch.Tensor, blocks: torch.Tensor, grid: Sequence[int], block_m: int | None = None,
                        rows: int | None = None, num_warps: int | None = None, num_stages: int | None = None,
                        max_registers: int | None = None) -> torch.Tensor:
    """Triton twin of ``toeplitz.box_conv`` in the Toeplitz form by rows (``_row_toeplitz_kernel``):
    x (B, C, H, W), R (C, k', Wp, Wp) in x.dtype -> (B, C, H, W). Defaults: ``row_toeplitz_tile``;
    ``max_registers`` caps the registers per thread (ptxas maxnreg: more programs per SM, maybe
    spills; 0 for no cap)."""
    x = x.contiguous()
    batch, channels, height, width = x.shape
    tile = row_toeplitz_tile(x.dtype, width)
    block_m, rows, num_warps, num_stages = (given or default for given, default in zip(
        (block_m, rows, num_warps, num_stages), tile[:4]))
    max_registers = tile.max_registers if max_registers is None else max_registers
    if x.dtype == torch.float64:
        block_m, rows = 16, 1  # the fp64 fallback holds a (BLOCK_M, Wp, rows·Wp) product
    block_m = max(16, min(block_m, triton.next_power_of_2(batch)))
    lo, hi = lag_reach(tuple(grid), height)
    cells = _offsets_tensor(tuple(lag_cells(tuple(grid), height)), x.device)
    y = torch.empty_like(x, dtype=_output_dtype(x.dtype))
    _row_toeplitz_kernel[(triton.cdiv(height, rows), channels, triton.cdiv(batch, block_m))](
        x, blocks.to(x.dtype).contiguous(), cells, y, batch, channels, height, width, len(grid), lo, hi,
        PRECISION=_dot_precision(x.dtype), UPCAST=_upcast(x.dtype), BLOCK_M=block_m, ROWS=rows,
        W_PAD=blocks.shape[-1], num_warps=num_warps, num_stages=num_stages,
        **({"maxnreg": max_registers} if max_registers else {}))
    return y.to(x.dtype)


def column_blocks_triton(weight: torch.Tensor, grid: Sequence[int], width: int, dtype: torch.dtype) -> torch.Tensor:
    """Triton twin of ``toeplitz.column_blocks``: w_θ (C, 1, k', k') -> R (C, k', Wp, Wp) in ``dtype``
    (rounded as torch casts), one kernel instead of torch's cast, pad and gather, which took 20 µs at
    stage 1 and 13 µs at stage 2 on the H200 (ncu, bench/ncu_layers.py)."""
    return _column_blocks(weight, grid, width, dtype, half_copy=False)[0]


def _column_blocks(weight: torch.Tensor, grid: Sequence[int], width: int, dtype: torch.dtype,
                   half_copy: bool, row_cells: int | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(R in ``dtype``, with ``half_copy`` R·2^e_c in fp16 and e_c (C,) int32, else None, None); with
    ``row_cells``, R only for cells of at most that many rows and the copy only for the others."""
    channels, cells = weight.shape[0], len(grid)
    padded = padded_width(width)
    column_cells = _offsets_tensor(tuple(lag_cells(tuple(grid), width)), weight.device)
    copies = _offsets_tensor(tuple(3 if row_cells is None else 1 if rows <= row_cells else 2 for rows in grid),
                             weight.device)
    if weight.dtype != dtype and (weight.dtype == torch.float64 or INTERPRETED):
        # one rounding, as torch's: from fp64 the kernel would round twice (to fp32, then dtype), and
        # the interpreter's fp32 -> bf16 truncates
        weight = weight.to(dtype)
    blocks = torch.empty(channels, cells, padded, padded, device=weight.device, dtype=_output_dtype(dtype))
    half = torch.empty(blocks.shape, device=weight.device, dtype=torch.float16) if half_copy else blocks
    exponents = torch.empty(channels, device=weight.device, dtype=torch.int32) if half_copy else column_cells
    _column_blocks_kernel[(channels, cells)](
        weight.contiguous(), column_cells, copies, blocks, half, exponents, cells, width, padded,
        HALF_COPY=half_copy, ROUNDED=_TRITON_TYPES.get(dtype, tl.float32), CELLS_PAD=triton.next_power_of_2(cells),
        SCALE_BITS=HALF_SCALE_BITS, num_warps=4)
    return blocks.to(dtype), (half if half_copy else None), (exponents if half_copy else None)


def column_prefix_triton(x: torch.Tensor) -> torch.Tensor:
    """Triton twin of ``toeplitz.column_prefix``: (B, C, H, W) -> (B, C, H+1, W), exclusive prefix
    sums along H in fp32 (fp64 for fp64), in one pass over x."""
    x = x.contiguous()
    batch, channels, height, width = x.shape
    prefix = torch.empty(batch, channels, height + 1, width, device=x.device, dtype=accumulate_dtype(x.dtype))
    block_w = min(64, triton.next_power_of_2(width))
    block_h = max(1, min(triton.next_power_of_2(height), 4096 // block_w))
    _column_prefix_kernel[(batch * channels, triton.cdiv(width, block_w))](
        x, prefix, height, width, BLOCK_H=block_h, BLOCK_W=block_w)
    return prefix


def box_products_triton(dy: torch.Tensor, x: torch.Tensor, grid: Sequence[int], block_k: int = 32,
                        num_warps: int = 4, num_stages: int = 1, programs: int = 1024) -> torch.Tensor:
    """Triton twin of ``toeplitz.box_products``: dy, x (B, C, H, W) -> (C, k', W, W) in fp32 (fp64).

    (w, v) is tiled by up to 64 a side; the B·H rows are split so that about ``programs``
    programs run, and torch adds the partial sums (deterministic, no atomics). Default tiles
    from an H100 sweep (bench/results/2026-11-25-h100-forms-box-sweep.md): one stage, no
    software pipelining, is 5x faster than three at 56x56 (0.58 vs 2.90 ms, bf16) and as fast
    at the smaller planes.
    """
    dy = dy.contiguous().to(x.dtype)
    batch, channels, height, width = x.shape
    prefix = column_prefix_triton(x)
    lags_lo, lags_hi, cells = _cell_lag_tensors(grid, x.device)
    block_w = max(16, min(64, triton.next_power_of_2(width)))
    if x.dtype == torch.float64:
        block_w, block_k = 16, 16  # the fp64 fallback holds a (BLOCK_W, BLOCK_K, BLOCK_W) product
    tiles = triton.cdiv(width, block_w) ** 2
    rows = batch * height
    splits = max(1, min(triton.cdiv(programs, channels * cells * tiles), triton.cdiv(rows, block_k)))
    per_split = triton.cdiv(triton.cdiv(rows, splits), block_k) * block_k
    splits = triton.cdiv(rows, per_split)
    partial = torch.empty(splits, channels, cells, width, width, device=x.device, dtype=prefix.dtype)
    _box_products_kernel[(channels * cells, splits, tiles)](
        dy, prefix, lags_lo, lags_hi, partial, batch, channels, height, width, cells, per_split,
        PRECISION=_dot_precision(x.dtype), UPCAST=_upcast(x.dtype),
        HI_LO=x.dtype in (torch.bfloat16, torch.float16), BLOCK_W=block_w, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages)
    return partial.sum(0)


def boundary_spectra_triton(weight: torch.Tensor, grid: Sequence[int], height: int,
                            width: int) -> spectral.BoundarySpectra:
    """Triton twin of ``spectral.boundary_spectra``: w_θ (C, 1, k', k') -> Ŝ (C, n, 2, Fp) in w_θ's
    accumulation dtype, in one launch (the torch form's weight cast, fp64 GEMM and rounding took three:
    14.9 µs at stage 1 K=101 on an H100, 2026-12-07, bench/ncu_layers.py --kernels)."""
    grid = tuple(grid)
    plus, minus, cells = spectral.spectrum_factors(grid, height, width, weight.device)
    boundaries, spectrum = plus.shape[0], cells.shape[1]
    spectra = torch.empty(weight.shape[0], boundaries, 2, spectrum // 2, device=weight.device,
                          dtype=accumulate_dtype(weight.dtype))
    block = 32  # divides 2·Fp (Fp a power of two >= 16)
    _boundary_spectra_kernel[(weight.shape[0], spectrum // block)](
        weight.contiguous(), plus, minus, cells, spectra, CELLS=len(grid), BOUNDARIES=boundaries,
        SPECTRUM=spectrum, N_PAD=triton.next_power_of_2(boundaries), S_BLOCK=block, num_warps=4)
    return spectral.BoundarySpectra(spectra, tuple(clamped_offsets(grid, height)))


def spectral_register_cap(height: int) -> int:
    """Registers a thread of the 4-warp spectral kernel may take so that its programs fit an SM 4 at a
    time on planes that pad to 32 (128; 133 uncapped at stage 2, offline for sm_90) and 3 at a time on
    larger ones (168; 174 uncapped at stage 1, and registers go by 8 a thread: 176 x 128 x 3 exceeds
    the 65536 an SM has)."""
    return 128 if padded_width(height) <= 32 else 168


def spectral_frequency_block(grid: Sequence[int], width: int) -> int:
    """Frequencies per pass of the spectral kernel's boundary loop: 32, or all Fp where fewer. On an
    H100 at stage 1 (Fp = 64) blocks of 32 ran 0.230 / 0.260 ms (K=51 / K=101) against 0.245 / 0.290
    for all 64 a pass and 0.249 / 0.341 for blocks of 16 (the passes' fixed costs outweigh the L1 a
    smaller block saves; bench/results/2026-12-06-h100-forms-spectral-blocks.md)."""
    return min(32, spectral.padded_frequencies(tuple(grid), width))


def spectral_planes(height: int) -> int:
    """Images per spectral program: 2 on planes that pad to 32 (a 64-row tile, wgmma's M), else 1. On an
    H100 at stage 2 two a program ran 0.101 / 0.104 ms (K=49 / K=69) against 0.139 / 0.145 for one; at
    stage 1 (two 64-row planes) 0.74 / 0.86 against 0.23 / 0.26
    (bench/results/2026-12-06-h100-forms-spectral-blocks.md)."""
    return 2 if padded_width(height) <= 32 else 1


def discards_l2_lines(device: torch.device) -> bool:
    """Whether kernels on ``device`` can drop L2 lines unwritten (``_discard_lines``: compiled, sm_80 on)."""
    return not INTERPRETED and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def spectral_conv_triton(x: torch.Tensor, spectra: spectral.BoundarySpectra, grid: Sequence[int],
                         num_warps: int = 4, num_stages: int = 1, max_registers: int | None = None,
                         frequency_block: int | None = None, planes: int | None = None) -> torch.Tensor:
    """Triton twin of ``spectral.spectral_conv``: x (B, C, H, W) fp32 or fp64, Ŝ -> (B, C, H, W).

    A program holds ``planes`` images of one channel (default ``spectral_planes``), each padded to
    powers of two (``toeplitz.padded_width``), so it suits planes up to 64 a side. The prefix
    spectrum's row shifts read a scratch of B·C·(H+1)·2·Fp entries in x's dtype, ``frequency_block``
    frequencies at a time (a power of two from 16 to Fp; default ``spectral_frequency_block``).
    ``max_registers`` caps the registers per thread (ptxas maxnreg); None takes
    ``spectral_register_cap``, 0 leaves them uncapped (as ``row_toeplitz_triton``)."""
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the spectral box form runs fp32 and fp64 inputs, got {x.dtype}")
    x = x.contiguous()
    batch, channels, height, width = x.shape
    grid = tuple(grid)
    max_registers = spectral_register_cap(height) if max_registers is None else max_registers
    planes = spectral_planes(height) if planes is None else planes
    forward, inverse = spectral.dft_bases(grid, width, x.dtype, x.device)
    frequencies = forward.shape[1]
    frequency_block = spectral_frequency_block(grid, width) if frequency_block is None else frequency_block
    if planes not in (1, 2) or frequency_block not in (16, 32, 64) or frequency_block > frequencies:
        raise ValueError(f"planes must be 1 or 2 and frequency_block a power of two from 16 to {frequencies}, "
                         f"got {planes} and {frequency_block}")
    padded_batch = triton.cdiv(batch, planes) * planes
    scratch = torch.empty(padded_batch * channels * (height + 1) * 2 * frequencies, device=x.device, dtype=x.dtype)
    y = torch.empty_like(x)
    _spectral_box_kernel[(triton.cdiv(batch, planes), channels)](
        x, spectra.spectra.to(x.dtype).contiguous(), _offsets_tensor(spectra.offsets, x.device), forward, inverse,
        scratch, y, batch, channels, len(spectra.offsets), height, width, PRECISION=_dot_precision(x.dtype),
        H_PAD=padded_width(height), W_PAD=padded_width(width), F_PAD=frequencies,
        F_USED=spectral.stored_frequencies(grid, width), F_BLOCK=frequency_block, PLANES=planes,
        DISCARD_SCRATCH=discards_l2_lines(x.device), num_warps=num_warps, num_stages=num_stages,
        **({"maxnreg": max_registers} if max_registers else {}))
    return y
