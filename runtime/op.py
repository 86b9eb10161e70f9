"""The public peripheral-conv op: backend choice, torch.library registration, autograd.

Layout follows flash-attention's layer_norm: the reference (reference.py) and
kernels (sat.py, triton_kernels.py) are plain functions; here they become the
custom ops ``pelk::peripheral_conv2d`` and ``pelk::peripheral_conv2d_grad_weight``
with fake (meta) implementations, an autograd formula and a FLOP formula, so
``torch.compile(fullgraph=True)``, ``torch.export`` and ``FlopCounterMode`` see
one op. The ``torch`` backend is the reference itself (plain autograd).

Backends: ``torch`` (expand + F.conv2d), ``sat`` (SAT form in plain torch, any
device), ``triton`` (SAT kernels; CUDA, or CPU under TRITON_INTERPRET=1), and
``auto`` = ``choose_backend``. An explicit backend that cannot run raises; it
never falls back to another one.
"""
from __future__ import annotations

import functools
from types import ModuleType
from typing import NamedTuple, Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from runtime import reference, sat

BACKENDS = ("auto", "torch", "sat", "triton")

# On CPU the SAT form beats F.conv2d when the dense kernel has this many times more
# taps than the (clamped) SAT form; measured with bench/bench_layers.py --cpu-crossover.
CPU_SAT_MIN_TAP_RATIO = 6.0
# On an H100 the Triton kernels beat cuDNN's dense depthwise conv once K² is at least this many
# times the SAT tap count: K=13 on 7x7 maps (169 vs 81 taps) runs faster dense, forward and
# backward; K=47 on 14x14 (2209 vs 121) runs 5x faster through Triton in training
# (bench/results/2026-11-25-h100-layers-triton.md).
CUDA_TRITON_MIN_TAP_RATIO = 4.0
# Each Triton program holds whole SAT planes; planes up to 63x63 (a 64-wide block) were measured.
# Larger ones (e.g. 96x96 at stage 1 of a 384² input) go to the plain-torch SAT form under auto.
TRITON_MAX_PLANE = 63


@functools.cache
def _triton() -> tuple[ModuleType | None, str]:
    """(runtime.triton_kernels or None, why not): triton is optional, imported on first use;
    its absence becomes a reason (auto) or an error (explicit triton), never an import error."""
    try:
        from runtime import triton_kernels
    except ImportError as error:  # triton is optional
        return None, f"{type(error).__name__}: {error}"
    return triton_kernels, ""


class BackendChoice(NamedTuple):
    """Which backend runs and why (``auto`` explains itself)."""

    name: str
    reason: str


def sat_tap_count(grid: Sequence[int], height: int, width: int) -> int:
    """Taps per output of the SAT form after clamping to an (H, W) image."""
    return len(sat.clamped_offsets(grid, height)) * len(sat.clamped_offsets(grid, width))


def choose_backend(device: torch.device | str, height: int, width: int, grid: Sequence[int]) -> BackendChoice:
    """The ``auto`` rule. CUDA: torch (cuDNN) when K² < CUDA_TRITON_MIN_TAP_RATIO x the SAT taps,
    else triton for planes up to TRITON_MAX_PLANE and sat beyond; torch when triton does not import.
    CPU: sat when K² is at least CPU_SAT_MIN_TAP_RATIO times the SAT tap count, torch otherwise."""
    device = torch.device(device)
    dense, taps = sum(grid) ** 2, sat_tap_count(grid, height, width)
    if device.type == "cuda":
        if dense < CUDA_TRITON_MIN_TAP_RATIO * taps:
            return BackendChoice("torch", f"CUDA: K²={dense} dense taps < {CUDA_TRITON_MIN_TAP_RATIO:g} x "
                                          f"{taps} SAT taps, cuDNN's depthwise conv is faster")
        kernels, error = _triton()
        if kernels is None:
            return BackendChoice("torch", f"CUDA tensor but triton does not import ({error})")
        if max(height, width) > TRITON_MAX_PLANE:
            return BackendChoice("sat", f"CUDA: {height}x{width} planes exceed the {TRITON_MAX_PLANE}x"
                                        f"{TRITON_MAX_PLANE} the Triton kernels hold per program; SAT form "
                                        f"in torch, {taps} taps per output instead of {dense}")
        return BackendChoice("triton", f"CUDA tensor and triton {kernels.triton.__version__} imports: "
                                       f"{taps} SAT taps per output instead of {dense}")
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
        return choose_backend(x.device, x.shape[2], x.shape[3], grid).name
    if backend == "triton":
        kernels, error = _triton()
        if kernels is None:
            raise RuntimeError(f"backend='triton' needs triton, which does not import ({error})")
        if x.device.type == "cpu" and not kernels.INTERPRETED:
            raise RuntimeError("backend='triton' got a CPU tensor: Triton runs on CPU only in interpreter "
                               "mode (set TRITON_INTERPRET=1 before importing triton); use 'sat' or 'torch'")
        if x.device.type not in ("cpu", "cuda"):
            raise RuntimeError(f"backend='triton' does not run on {x.device.type} tensors")
    return backend


def _primitives(backend: str):
    if backend == "sat":
        return sat.sat_taps, sat.sat_tap_sums
    if backend == "triton":
        kernels, _ = _triton()
        return kernels.sat_taps_triton, kernels.sat_tap_sums_triton
    raise ValueError(f"pelk::peripheral_conv2d runs the 'sat' or 'triton' backend, got {backend!r}")


@torch.library.custom_op("pelk::peripheral_conv2d", mutates_args=())
def _conv(x: torch.Tensor, weight: torch.Tensor, grid: list[int], backend: str) -> torch.Tensor:
    """x (B, C, H, W), weight (C, 1, k', k') -> (B, C, H, W) in x.dtype."""
    return sat.peripheral_conv2d_taps(x, weight, grid, _primitives(backend)[0])


@_conv.register_fake
def _conv_fake(x, weight, grid, backend):
    return x.new_empty(x.shape)


@torch.library.custom_op("pelk::peripheral_conv2d_grad_weight", mutates_args=())
def _grad_weight(dy: torch.Tensor, x: torch.Tensor, grid: list[int], backend: str) -> torch.Tensor:
    """dy, x (B, C, H, W) -> dL/dw_θ (C, 1, k', k') in fp32 (fp64 for fp64 x)."""
    return sat.peripheral_grad_weight_taps(dy, x, grid, _primitives(backend)[1])


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
