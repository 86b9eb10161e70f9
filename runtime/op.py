"""The public peripheral-conv op: backend choice, torch.library registration, autograd.

Layout follows flash-attention's layer_norm: the reference (reference.py) and
kernels (sat.py, triton_kernels.py) are plain functions; here they become the
custom ops ``pelk::peripheral_conv2d`` and ``pelk::peripheral_conv2d_grad_weight``
with fake (meta) implementations, an autograd formula and a FLOP formula, so
``torch.compile(fullgraph=True)``, ``torch.export`` and ``FlopCounterMode`` see
one op. The ``torch`` backend is the reference itself (plain autograd).

Backends: ``torch`` (expand + F.conv2d), ``sat`` (SAT form in plain torch, any
device), ``triton`` (CUDA, or CPU under TRITON_INTERPRET=1), and ``auto`` =
``choose_backend``. The triton backend picks its kernels per call and per direction
(``triton_forms``): for the forward and grad-input the Toeplitz form on tensor cores
(toeplitz.py; small images, reduced precision; by image rows on narrow planes), the plane box (the
box form with a whole plane on chip; 16-bit planes of 50-64 a side), the box form on tensor cores
(toeplitz.py; fp32 at the larger planes; on planes of 33-64 a side in its spectral version,
spectral.py) or the SAT form (sat.py); for grad-weight the box products
or the SAT tap sums.
An explicit backend that cannot run raises; it never falls back to another one.

Under autocast, the custom op (unlike F.conv2d) is not cast by torch, so the
public function casts x to the autocast dtype itself, as F.conv2d would.
"""
from __future__ import annotations

import inspect
from types import ModuleType
from typing import NamedTuple, Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from runtime import reference, sat, spectral, toeplitz

BACKENDS = ("auto", "torch", "sat", "triton")

# On CPU the SAT form beats F.conv2d when the dense kernel has this many times more
# taps than the (clamped) SAT form; measured with bench/bench_layers.py --cpu-crossover.
CPU_SAT_MIN_TAP_RATIO = 6.0
# On an H100 the SAT kernels beat cuDNN's dense depthwise conv once K² is at least this many
# times the SAT tap count (bench/results/2026-11-25-h100-layers-triton.md). Only asked when
# the Toeplitz form does not apply.
CUDA_TRITON_MIN_TAP_RATIO = 4.0
# Each SAT program holds whole SAT planes; planes up to 63x63 (a 64-wide block) were measured.
TRITON_MAX_PLANE = 63
# The Toeplitz form does H·W tensor-core multiply-adds per output (forward) and its grad-weight
# k'·W per input pixel (W padded to a power of two >= 16), the SAT form n_rows·n_cols FMAs. The
# Toeplitz kernels run when their count is at most this many times the SAT tap count, per input
# precision ("16" = bf16/fp16 on native tensor cores, "32" = fp32 as three TF32 products, fp64).
# Calibrated with bench/bench_forms.py on an H100 (bench/results/2026-11-25-h100-forms.md): the
# Toeplitz forward wins up to HW/taps = 16 (bf16, stage 1) and 4 (fp32, stage 2) and loses at 16
# (fp32, stage 1). The box grad-weight wins at every PeLK-T shape, k'·W/taps from 1.4 to 4.2
# (bench/results/2026-11-25-h100-forms-box-sweep.md; at 4.2, stage 1: 0.58 vs 1.50 ms bf16,
# 0.77 vs 1.52 ms fp32); 8 is that with a margin, not a measured crossover.
TOEPLITZ_TAP_RATIO = {"16": 32.0, "32": 6.0}
BOX_TAP_RATIO = {"16": 8.0, "32": 8.0}
# The box forward does k'·W multiply-adds per output (W padded as above). It runs where that is at
# most BOX_CONV_TAP_RATIO x the SAT taps and at most BOX_CONV_TOEPLITZ_SHARE x the Toeplitz form's
# H·W. Calibrated on an H100 (bench/results/2026-11-25-h100-forms-boxconv-constexpr.md): in fp32 it
# won at stage 1 (k'·W/taps 4.2 and 3.0: 0.43 vs 0.46 ms, 0.54 vs 0.81 ms against SAT) and stage 2
# (k'·W/HW 0.53 and 0.61: 0.16 vs 0.24 ms against Toeplitz). In bf16 it lost to the Toeplitz form at
# every PeLK-T shape (the box sums need a hi/lo split there, the Toeplitz products do not): never.
BOX_CONV_TAP_RATIO = {"16": 0.0, "32": 4.5}
BOX_CONV_TOEPLITZ_SHARE = 0.75
# The plane-box forward (16-bit inputs) holds a whole plane on chip, padded to powers of two, and
# forms the box sums there as tensor-core products too. On an H100 at stage 1 bf16 (56x56, padded to
# 64) it ran 0.125 vs 0.269 ms for the Toeplitz form (K=51) and 0.158 vs 0.323 ms (K=101)
# (bench/results/2026-11-25-h100-forms-plane-box-bands.md); at 28x28 (padded to 32, where Triton
# falls back from wgmma to mma) its first version lost, 0.18 vs 0.056 ms (-plane-box.md). It runs for
# planes that pad to one of PLANE_BOX_PADDED_SIZES on both sides and fill at least PLANE_BOX_MIN_FILL
# of that square: the Toeplitz cost per plane falls as (H·W)², the plane box's does not, so from
# 1.86x at 56x56 (first version) they would meet near 48x48 (0.56 of 64²); 0.6 keeps a margin and is
# not a measured crossover. In fp32 each of its products is three TF32 products: 0.84 vs 0.43 ms for
# the box form at stage 1.
PLANE_BOX_PADDED_SIZES = (64,)
PLANE_BOX_MIN_FILL = 0.6
# Where the box forward would run in fp32, the spectral box form (spectral.py: a DFT along W turns each
# cell boundary's horizontal Toeplitz product into a product per frequency, a quarter to a third of the
# box form's tensor-core work at stage 1) replaces it on planes that pad to one of
# SPECTRAL_BOX_PADDED_SIZES on both sides. On an H100 at stage 1 (56x56) it ran 0.224 vs 0.395 ms
# (K=51) and 0.254 vs 0.498 ms (K=101); at stage 2 (28x28, padded to 32) 0.101 vs 0.148 and 0.104 vs
# 0.167 ms (bench/results/2026-12-06-h100-forms-spectral-variants.md).
SPECTRAL_BOX_PADDED_SIZES = (32, 64)
# Where the Toeplitz form runs, the Toeplitz GEMM by image rows (column blocks as its operand, plain
# tile loads instead of a gather per element) replaces it on planes up to ROW_TOEPLITZ_MAX_WIDTH wide
# whose width pads by at most ROW_TOEPLITZ_MAX_PADDING (it does padded-W multiply-adds per input row).
# On the H200 (bench/results/2026-12-03-h200-forms-candidates.md) it won at padding 1.14 (28 -> 32 and
# 14 -> 16: bf16 0.052 vs 0.056 ms at stage 2, 0.019 vs 0.021 at stage 3; fp32 0.044 vs 0.054 at stage
# 3) and lost at 2.29 (7 -> 16: bf16 0.017 vs 0.012 ms, fp32 0.031 vs 0.017).
ROW_TOEPLITZ_MAX_WIDTH = 32
ROW_TOEPLITZ_MAX_PADDING = 1.2


def _import_triton_kernels() -> tuple[ModuleType | None, str]:
    """(runtime.triton_kernels or None, why not): triton is optional; its absence becomes a reason
    (auto) or an error (explicit triton), never an import error."""
    try:
        from runtime import triton_kernels
    except Exception as error:  # triton is optional, and a broken install raises more than ImportError
        return None, f"{type(error).__name__}: {error}"
    return triton_kernels, ""


# (runtime.triton_kernels or None, why not), imported once with this module (torch itself imports
# triton where it is installed). A module constant rather than a cached function: torch.compile
# traces the backend choice, and Dynamo warns about every functools.cache-wrapped call it traces.
_TRITON_KERNELS = _import_triton_kernels()


class BackendChoice(NamedTuple):
    """Which backend runs and why (``auto`` explains itself)."""

    name: str
    reason: str


def sat_tap_count(grid: Sequence[int], height: int, width: int) -> int:
    """Taps per output of the SAT form after clamping to an (H, W) image."""
    return len(sat.clamped_offsets(grid, height)) * len(sat.clamped_offsets(grid, width))


def box_macs(grid: Sequence[int], width: int) -> int:
    """Tensor-core multiply-adds of the box forms: per output (box forward) or per input pixel
    (box products), k'·W with W padded to a power of two >= 16."""
    return len(grid) * toeplitz.padded_width(width)


class TritonForms(NamedTuple):
    """Kernel family the triton backend runs: ``conv`` (forward and grad-input) is 'toeplitz',
    'rowtoeplitz' (the Toeplitz GEMM by image rows), 'plane' (the plane box), 'box', 'spectral' (the
    spectral box form) or 'sat',
    ``grad_weight`` is 'box' (the box products) or 'sat'."""

    conv: str
    grad_weight: str


def triton_forms(height: int, width: int, grid: Sequence[int], dtype: torch.dtype) -> TritonForms:
    """Which Triton kernels run for an (H, W) image in ``dtype``: the plane box for 16-bit planes that
    fill its padded square (PLANE_BOX_PADDED_SIZES, PLANE_BOX_MIN_FILL), else the cheaper by the
    tap-ratio rules (BOX_CONV_TAP_RATIO and BOX_CONV_TOEPLITZ_SHARE, TOEPLITZ_TAP_RATIO,
    BOX_TAP_RATIO), the box form in its spectral version for fp32 planes that pad to
    SPECTRAL_BOX_PADDED_SIZES; always Toeplitz and box products beyond the SAT kernels'
    TRITON_MAX_PLANE. The Toeplitz form runs by image rows on narrow planes (ROW_TOEPLITZ_MAX_WIDTH, ..._PADDING)."""
    taps = sat_tap_count(grid, height, width)
    precision = "16" if dtype in (torch.bfloat16, torch.float16) else "32"
    too_big_for_sat = max(height, width) > TRITON_MAX_PLANE
    boxes = box_macs(grid, width)
    padded = toeplitz.padded_width(height)
    square = padded == toeplitz.padded_width(width)  # both sides pad to the same power of two
    if (precision == "16" and square and padded in PLANE_BOX_PADDED_SIZES
            and height * width >= PLANE_BOX_MIN_FILL * padded * padded):
        conv = "plane"
    elif too_big_for_sat:
        conv = "toeplitz"
    elif boxes <= BOX_CONV_TAP_RATIO[precision] * taps and boxes <= BOX_CONV_TOEPLITZ_SHARE * height * width:
        conv = "box"
    else:
        conv = "toeplitz" if height * width <= TOEPLITZ_TAP_RATIO[precision] * taps else "sat"
    if conv == "box" and dtype == torch.float32 and square and padded in SPECTRAL_BOX_PADDED_SIZES:
        conv = "spectral"
    if (conv == "toeplitz" and width <= ROW_TOEPLITZ_MAX_WIDTH
            and toeplitz.padded_width(width) <= ROW_TOEPLITZ_MAX_PADDING * width):
        conv = "rowtoeplitz"
    grad_weight = too_big_for_sat or boxes <= BOX_TAP_RATIO[precision] * taps
    return TritonForms(conv, "box" if grad_weight else "sat")


def choose_backend(device: torch.device | str, height: int, width: int, grid: Sequence[int],
                   dtype: torch.dtype = torch.float32) -> BackendChoice:
    """The ``auto`` rule for a (B, C, H, W) input of ``dtype`` (after autocast).

    CUDA: triton when its Toeplitz or box form applies (``triton_forms``); otherwise torch (cuDNN) when
    K² < CUDA_TRITON_MIN_TAP_RATIO x the SAT taps, sat beyond TRITON_MAX_PLANE, else triton's SAT
    kernels; torch when triton does not import.
    CPU: sat when K² is at least CPU_SAT_MIN_TAP_RATIO times the SAT tap count, torch otherwise."""
    device = torch.device(device)
    dense, taps = sum(grid) ** 2, sat_tap_count(grid, height, width)
    if device.type == "cuda":
        kernels, error = _TRITON_KERNELS
        if kernels is None:
            return BackendChoice("torch", f"CUDA tensor but triton does not import ({error})")
        forms = triton_forms(height, width, grid, dtype)
        weight_part = ("grad-weight as box-product GEMMs" if forms.grad_weight == "box"
                       else f"grad-weight by {taps} SAT taps")
        if forms.conv == "toeplitz":
            return BackendChoice("triton", f"CUDA, triton {kernels.triton.__version__}: Toeplitz GEMM on tensor "
                                           f"cores, {height * width} MACs per output instead of K²={dense} "
                                           f"(SAT: {taps} taps); {weight_part}")
        if forms.conv == "rowtoeplitz":
            return BackendChoice("triton", f"CUDA, triton {kernels.triton.__version__}: Toeplitz GEMM by image "
                                           f"rows on tensor cores, {height * toeplitz.padded_width(width)} MACs "
                                           f"per output instead of K²={dense} (SAT: {taps} taps); {weight_part}")
        if forms.conv == "plane":
            return BackendChoice("triton", f"CUDA, triton {kernels.triton.__version__}: plane-box GEMMs on tensor "
                                           f"cores, the {height}x{width} plane held on chip and its box sums "
                                           f"formed there, instead of K²={dense} taps (SAT: {taps}, Toeplitz: "
                                           f"{height * width}); {weight_part}")
        if forms.conv == "spectral":
            return BackendChoice("triton", f"CUDA, triton {kernels.triton.__version__}: spectral box form, the "
                                           f"{height}x{width} plane on chip, a DFT along W making each cell "
                                           f"boundary's product one per frequency, instead of K²={dense} taps "
                                           f"(SAT: {taps}, box: {box_macs(grid, width)}); {weight_part}")
        if forms.conv == "box":
            return BackendChoice("triton", f"CUDA, triton {kernels.triton.__version__}: box-form GEMM on tensor "
                                           f"cores, {box_macs(grid, width)} MACs per output instead of "
                                           f"K²={dense} (SAT: {taps} taps, Toeplitz: {height * width}); {weight_part}")
        if dense < CUDA_TRITON_MIN_TAP_RATIO * taps:
            return BackendChoice("torch", f"CUDA: K²={dense} dense taps < {CUDA_TRITON_MIN_TAP_RATIO:g} x "
                                          f"{taps} SAT taps, cuDNN's depthwise conv is faster")
        if max(height, width) > TRITON_MAX_PLANE:
            return BackendChoice("sat", f"CUDA: {height}x{width} planes exceed the {TRITON_MAX_PLANE}x"
                                        f"{TRITON_MAX_PLANE} the SAT kernels hold per program; SAT form "
                                        f"in torch, {taps} taps per output instead of {dense}")
        return BackendChoice("triton", f"CUDA, triton {kernels.triton.__version__}: SAT kernels, "
                                       f"{taps} taps per output instead of K²={dense}; {weight_part}")
    if device.type == "cpu":
        if dense >= CPU_SAT_MIN_TAP_RATIO * taps:
            return BackendChoice("sat", f"CPU: K²={dense} dense taps >= {CPU_SAT_MIN_TAP_RATIO:g} x "
                                        f"{taps} SAT taps, the measured crossover")
        return BackendChoice("torch", f"CPU: K²={dense} dense taps < {CPU_SAT_MIN_TAP_RATIO:g} x "
                                      f"{taps} SAT taps, F.conv2d is faster")
    return BackendChoice("torch", f"{device.type} tensor: only the torch backend is known to run there")


def resolve_backend(backend: str, x: torch.Tensor, grid: Sequence[int]) -> str:
    """The concrete backend for ``x``: ``auto`` resolved, an explicit one checked (raises if it cannot run)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return choose_backend(x.device, x.shape[2], x.shape[3], grid, x.dtype).name
    if backend == "triton":
        kernels, error = _TRITON_KERNELS
        if kernels is None:
            raise RuntimeError(f"backend='triton' needs triton, which does not import ({error})")
        if x.device.type == "cpu" and not kernels.INTERPRETED:
            raise RuntimeError("backend='triton' got a CPU tensor: Triton runs on CPU only in interpreter "
                               "mode (set TRITON_INTERPRET=1 before importing triton); use 'sat' or 'torch'")
        if x.device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"backend='triton' does not run on {x.device.type} tensors")
    return backend


def _conv_impl(x: torch.Tensor, weight: torch.Tensor, grid: tuple[int, ...], backend: str) -> torch.Tensor:
    if backend == "sat":
        return sat.peripheral_conv2d_taps(x, weight, grid, sat.sat_taps)
    if backend != "triton":
        raise ValueError(f"pelk::peripheral_conv2d runs the 'sat' or 'triton' backend, got {backend!r}")
    kernels, _ = _TRITON_KERNELS
    height, width = x.shape[-2:]
    form = triton_forms(height, width, grid, x.dtype).conv
    if form == "sat":
        return sat.peripheral_conv2d_taps(x, weight, grid, kernels.sat_taps_triton)
    box_convs = {"box": (kernels.box_conv_triton, kernels.column_blocks_triton),
                 "rowtoeplitz": (kernels.row_toeplitz_triton, kernels.column_blocks_triton),
                 "plane": (kernels.plane_box_conv_triton, kernels.plane_blocks_triton)}
    if form in box_convs:
        return toeplitz.peripheral_conv2d_box(x, weight, grid, *box_convs[form])
    if form == "spectral":
        return spectral.peripheral_conv2d_spectral(x, weight, grid, kernels.spectral_conv_triton,
                                                    kernels.boundary_spectra_triton)
    reach = toeplitz.lag_reach(grid, height)
    return toeplitz.peripheral_conv2d_lags(
        x, weight, grid, lambda images, kernel: kernels.toeplitz_conv_triton(images, kernel, reach))


def _grad_weight_impl(dy: torch.Tensor, x: torch.Tensor, grid: tuple[int, ...], backend: str) -> torch.Tensor:
    if backend == "sat":
        return sat.peripheral_grad_weight_taps(dy, x, grid, sat.sat_tap_sums)
    if backend != "triton":
        raise ValueError(f"pelk::peripheral_conv2d_grad_weight runs 'sat' or 'triton', got {backend!r}")
    kernels, _ = _TRITON_KERNELS
    if triton_forms(x.shape[-2], x.shape[-1], grid, x.dtype).grad_weight == "sat":
        return sat.peripheral_grad_weight_taps(dy, x, grid, kernels.sat_tap_sums_triton)
    return toeplitz.peripheral_grad_weight_boxes(dy, x, grid, kernels.box_products_triton)


# Under torch.compile, inductor may hand a custom op a view in whatever layout it picked (e.g.
# channels-last after the stem conv); the kernels would then copy it to contiguous NCHW in a
# separate transposing pass. This tag makes inductor produce contiguous inputs inside its own
# fused kernels instead (older torch: the closest tag it has).
# torch.library.custom_op takes tags only in newer torch (the package allows >= 2.4).
_CONTIGUOUS_INPUTS = tuple(getattr(torch.Tag, name) for name in
                           ("needs_contiguous_strides", "needs_exact_strides", "needs_fixed_stride_order")
                           if hasattr(torch.Tag, name))[:1]
_OP_TAGS = {"tags": _CONTIGUOUS_INPUTS} if "tags" in inspect.signature(torch.library.custom_op).parameters else {}


@torch.library.custom_op("pelk::peripheral_conv2d", mutates_args=(), **_OP_TAGS)
def _conv(x: torch.Tensor, weight: torch.Tensor, grid: list[int], backend: str) -> torch.Tensor:
    """x (B, C, H, W), weight (C, 1, k', k') -> (B, C, H, W) in x.dtype."""
    with torch.autocast(x.device.type, enabled=False):  # the kernels pick their own precision
        return _conv_impl(x, weight, tuple(grid), backend)


@_conv.register_fake
def _conv_fake(x, weight, grid, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("pelk::peripheral_conv2d_grad_weight", mutates_args=(), **_OP_TAGS)
def _grad_weight(dy: torch.Tensor, x: torch.Tensor, grid: list[int], backend: str) -> torch.Tensor:
    """dy, x (B, C, H, W) -> dL/dw_θ (C, 1, k', k') in fp32 (fp64 for fp64 x)."""
    with torch.autocast(x.device.type, enabled=False):
        return _grad_weight_impl(dy, x, tuple(grid), backend)


@_grad_weight.register_fake
def _grad_weight_fake(dy, x, grid, backend):
    return x.new_empty((x.shape[1], 1, len(grid), len(grid)), dtype=sat.accumulate_dtype(x.dtype))


def _setup_context(ctx, inputs, output):
    x, weight, grid, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.grid, ctx.backend = grid, backend


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    grad_x = grad_weight = None
    if ctx.needs_input_grad[0]:
        grad_x = _conv(dy, weight.flip(-2, -1), list(reversed(ctx.grid)), ctx.backend)
    if ctx.needs_input_grad[1]:
        grad_weight = _grad_weight(dy, x, ctx.grid, ctx.backend).to(weight.dtype)
    return grad_x, grad_weight, None, None


_conv.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.pelk.peripheral_conv2d)
def _conv_flops(x_shape, weight_shape, grid, backend, *args, out_shape=None, **kwargs) -> int:
    """Counted as the dense K x K depthwise conv it equals: 2·B·C·H·W·K² (multiply-adds x 2)."""
    batch, channels, height, width = x_shape
    return 2 * batch * channels * height * width * sum(grid) ** 2


@register_flop_formula(torch.ops.pelk.peripheral_conv2d_grad_weight)
def _grad_weight_flops(dy_shape, x_shape, grid, backend, *args, out_shape=None, **kwargs) -> int:
    """Like a dense depthwise conv's weight gradient: 2·B·C·H·W·K²."""
    batch, channels, height, width = x_shape
    return 2 * batch * channels * height * width * sum(grid) ** 2


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, grid: tuple[int, ...],
                  pos_embed: torch.Tensor | None, pos_mode: str) -> None:
    size, cells = sum(grid), len(grid)
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    if tuple(weight.shape) != (x.shape[1], 1, cells, cells):
        raise ValueError(f"weight must be (C, 1, k', k') = {(x.shape[1], 1, cells, cells)} for x of "
                         f"shape {tuple(x.shape)} and a grid of {cells} cells, got {tuple(weight.shape)}")
    if pos_mode not in reference.POS_MODES:
        raise ValueError(f"pos_mode must be one of {reference.POS_MODES}, got {pos_mode!r}")
    if pos_embed is not None and tuple(pos_embed.shape) != (x.shape[1], size, size):
        raise ValueError(f"pos_embed must be (C, K, K) = {(x.shape[1], size, size)}, "
                         f"got {tuple(pos_embed.shape)}")


def _autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x cast to the autocast dtype where autocast is on for x's device (as F.conv2d would be)."""
    device_type = x.device.type
    if x.dtype == torch.float32 and device_type in ("cuda", "cpu") and torch.is_autocast_enabled(device_type):
        return x.to(torch.get_autocast_dtype(device_type))
    return x


def peripheral_conv2d(x: torch.Tensor, weight: torch.Tensor, grid: Sequence[int],
                      bias: torch.Tensor | None = None, pos_embed: torch.Tensor | None = None,
                      pos_mode: str = "padded", backend: str = "auto") -> torch.Tensor:
    """Peripheral conv: depthwise, stride 1, same padding, kernel ``expand_kernel(weight, grid)``.

    x (B, C, H, W); weight (C, 1, k', k'); grid k' positive ints summing to odd K;
    bias (C,); pos_embed (C, K, K) added per Eq. 3 in ``pos_mode`` 'padded' or 'valid'.
    Returns (B, C, H, W) in x.dtype.
    """
    grid = reference.check_grid(grid)
    _check_inputs(x, weight, grid, pos_embed, pos_mode)
    x = _autocast_input(x)
    name = resolve_backend(backend, x, grid)
    if name == "torch":
        y = reference.peripheral_conv2d_reference(x, weight, grid)
    else:
        y = torch.ops.pelk.peripheral_conv2d(x, weight, list(grid), name)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    if pos_embed is not None:
        height, width = x.shape[-2:]
        y = y + reference.pos_embed_term(weight, grid, pos_embed, pos_mode, height, width).to(y.dtype)
    return y
