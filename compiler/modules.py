"""PyTorch building blocks of the compiled networks.

The macro architecture is ConvNeXt's (as in SLaK and PeLK): patchify stem,
four stages separated by LayerNorm + strided-conv downsampling, blocks of
large-kernel mixer -> LayerNorm -> MLP -> layer scale -> drop path -> residual,
and a pooled LayerNorm + Linear head. Mixers:

* PeripheralMixer: PeLK's partial peripheral conv (runtime op) + BN, in
  parallel with a small depthwise conv + BN, on the first g channels.
* DenseMixer: K x K depthwise (ConvNeXt with bias; RepLKNet with BN + 5x5).
* StripeMixer: SLaK's K x N + N x K (+ N x N) depthwise convs, each + BN.

Tensors are (B, C, H, W) between modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import runtime
from archspec.grid import SharingGrid


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def make_norm2d(kind: str, channels: int) -> nn.Module:
    """Channels-first norm by name: layernorm, batchnorm or none."""
    if kind == "layernorm":
        return LayerNorm2d(channels, eps=1e-6)
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class DropPath(nn.Module):
    """Stochastic depth: drops whole residual branches per sample while training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class ConvNorm(nn.Sequential):
    """Depthwise conv followed by an optional BatchNorm (bias only when no norm)."""

    def __init__(self, channels: int, kernel_size: tuple[int, int], norm: str):
        conv = nn.Conv2d(channels, channels, kernel_size, padding=(kernel_size[0] // 2, kernel_size[1] // 2),
                         groups=channels, bias=norm == "none")
        super().__init__(conv, make_norm2d(norm, channels))


def norm_affine(norm: nn.Module, channels: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), each (C,), of an eval-mode BatchNorm (identity for ``nn.Identity``)."""
    if isinstance(norm, nn.Identity):
        return torch.ones(channels, dtype=like.dtype, device=like.device), like.new_zeros(channels)
    if not isinstance(norm, nn.BatchNorm2d) or norm.running_var is None:
        raise TypeError(f"cannot fold {type(norm).__name__}: only BatchNorm2d with running statistics folds")
    scale = norm.running_var.add(norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


def fold_conv_norm(weight: torch.Tensor, bias: torch.Tensor | None,
                   norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """norm(conv(x; weight, bias)) as one conv: weight (C, 1, kh, kw) -> (folded weight, bias (C,))."""
    scale, shift = norm_affine(norm, weight.shape[0], weight)
    folded_bias = shift if bias is None else shift + scale * bias
    return weight * scale.view(-1, 1, 1, 1), folded_bias


def fold_conv_norm_pair(branch: ConvNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``ConvNorm`` (depthwise conv, BN or identity) as (weight (C, 1, kh, kw), bias (C,))."""
    conv, norm = branch[0], branch[1]
    return fold_conv_norm(conv.weight, conv.bias, norm)


class PartialMixer(nn.Module):
    """Base of the mixers: the kernel branches see the first ``channels`` channels, the rest pass through."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.dim, self.channels = dim, channels

    def mix(self, x: torch.Tensor, pos_embed: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        if self.channels == self.dim:
            return self.mix(x, pos_embed)
        # split, not two slices: its backward is one cat, where each slice's backward writes a
        # zero-filled full-width gradient and the two are then added (eager memory traffic).
        mixed, passed = torch.split(x, [self.channels, self.dim - self.channels], dim=1)
        return torch.cat([self.mix(mixed, pos_embed), passed], dim=1)


class PeripheralMixer(PartialMixer):
    """Partial peripheral conv (Sec. 4.3) in training form.

    y[:, :g] = BN(pconv(x[:, :g]; h)) + BN(small(x[:, :g])),  y[:, g:] = x[:, g:]
    with g = ``channels`` and h the stage's positional embedding (g, K, K).
    ``folded_branch`` and ``fold_small_kernel`` give the eval-mode fold the deploy form uses.
    """

    def __init__(self, dim: int, channels: int, grid: tuple[int, ...], small_kernel: int | None,
                 norm: str, pos_mode: str, backend: str = "auto"):
        super().__init__(dim, channels)
        self.grid, self.pos_mode = tuple(grid), pos_mode
        self.kernel_size = sum(self.grid)
        self.conv = runtime.PeripheralConv2d(channels, self.grid, bias=norm == "none", backend=backend)
        self.norm = make_norm2d(norm, channels)
        self.small = ConvNorm(channels, (small_kernel, small_kernel), norm) if small_kernel else None
        self.folds_small_kernel = small_kernel is None or small_kernel <= SharingGrid(self.grid).unshared_center
        cell_of_row = [cell for cell, size in enumerate(self.grid) for _ in range(size)]
        # The shared-weight row of the small kernel's first row (size-1 cells from there on when it folds).
        self.small_first_cell = cell_of_row[self.kernel_size // 2 - (small_kernel or 1) // 2]

    def folded_branch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode BN folded into the conv: shared weights (g, 1, k', k') and bias (g,)."""
        return fold_conv_norm(self.conv.weight, self.conv.bias, self.norm)

    def fold_small_kernel(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``weight`` (g, 1, k', k') with the BN-folded small kernel added on its unshared centre cells,
        and the small branch's bias (g,); zeros without a small kernel."""
        if self.small is None:
            return weight, weight.new_zeros(self.channels)
        small_weight, small_bias = fold_conv_norm_pair(self.small)
        first = self.small_first_cell
        after = len(self.grid) - first - small_weight.shape[-1]
        return weight + F.pad(small_weight, (first, after, first, after)), small_bias

    def mix(self, x: torch.Tensor, pos_embed: torch.Tensor | None) -> torch.Tensor:
        y = self.norm(self.conv(x, pos_embed=pos_embed, pos_mode=self.pos_mode))
        return y + self.small(x) if self.small is not None else y


class DenseMixer(PartialMixer):
    """K x K depthwise conv (+ BN) with an optional parallel small kernel (+ BN)."""

    def __init__(self, dim: int, channels: int, kernel_size: int, small_kernel: int | None, norm: str):
        super().__init__(dim, channels)
        self.large = ConvNorm(channels, (kernel_size, kernel_size), norm)
        self.small = ConvNorm(channels, (small_kernel, small_kernel), norm) if small_kernel else None

    def mix(self, x: torch.Tensor, pos_embed: torch.Tensor | None) -> torch.Tensor:
        y = self.large(x)
        return y + self.small(x) if self.small is not None else y


class StripeMixer(PartialMixer):
    """SLaK's decomposed kernel: (K x N) + (N x K) [+ N x N], each depthwise + BN, summed."""

    def __init__(self, dim: int, channels: int, kernel_size: int, short_side: int,
                 small_kernel: int | None, norm: str):
        super().__init__(dim, channels)
        self.vertical = ConvNorm(channels, (kernel_size, short_side), norm)
        self.horizontal = ConvNorm(channels, (short_side, kernel_size), norm)
        self.small = ConvNorm(channels, (small_kernel, small_kernel), norm) if small_kernel else None

    def mix(self, x: torch.Tensor, pos_embed: torch.Tensor | None) -> torch.Tensor:
        y = self.vertical(x) + self.horizontal(x)
        return y + self.small(x) if self.small is not None else y


# cuBLAS's tensor-core GEMMs want 16-byte aligned rows: 8 bf16/fp16 elements. PeLK's widths
# (int(1.3 dim): 124, 249, 499, 998 and 4x those) are not, and an unaligned GEMM falls back to
# kernels several times slower (H100, bf16: the align1 GEMMs took 40% of a PeLK-T inference step).
GEMM_ALIGNMENT = 8


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def aligned_mlp(x: torch.Tensor, fc1: nn.Linear, act: nn.Module, fc2: nn.Linear,
                multiple: int = GEMM_ALIGNMENT) -> torch.Tensor:
    """fc2(act(fc1(x))) for x (..., C) with C and the hidden width zero-padded to ``multiple``.

    The padded hidden units have zero weights and bias, and fc2 reads them through zero
    columns, so the result equals the plain MLP for any activation (up to GEMM summation
    order); the output is a (..., C) view of the padded GEMM's output.
    """
    dim, hidden = fc1.in_features, fc1.out_features
    pad_dim, pad_hidden = _round_up(dim, multiple) - dim, _round_up(hidden, multiple) - hidden
    bias1 = F.pad(fc1.bias, (0, pad_hidden)) if fc1.bias is not None else None
    bias2 = F.pad(fc2.bias, (0, pad_dim)) if fc2.bias is not None else None
    x = F.pad(x, (0, pad_dim))
    x = act(F.linear(x, F.pad(fc1.weight, (0, pad_dim, 0, pad_hidden)), bias1))
    x = F.linear(x, F.pad(fc2.weight, (0, pad_hidden, 0, pad_dim)), bias2)
    return x[..., :dim]


class Mlp(nn.Module):
    """Pointwise MLP on channels-last tokens: Linear(C, hidden) -> GELU -> Linear(hidden, C).

    On CUDA, widths that are not multiples of ``GEMM_ALIGNMENT`` run through ``aligned_mlp``
    (the parameters keep their shapes; only the GEMMs see the padding).
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    @property
    def misaligned(self) -> bool:
        """Whether a width is off ``GEMM_ALIGNMENT`` (read off the layers, so pruning keeps it true)."""
        return self.fc1.in_features % GEMM_ALIGNMENT != 0 or self.fc1.out_features % GEMM_ALIGNMENT != 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.misaligned and x.is_cuda:
            return aligned_mlp(x, self.fc1, self.act, self.fc2)
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """mixer -> LayerNorm -> MLP -> layer scale -> drop path -> + residual; (B, C, H, W) in and out."""

    def __init__(self, dim: int, mixer: nn.Module, mlp_hidden: int, layer_scale_init: float | None,
                 drop_path: float):
        super().__init__()
        self.mixer = mixer
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init)) if layer_scale_init else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor | None = None) -> torch.Tensor:
        shortcut = x
        x = self.mixer(x, pos_embed).permute(0, 2, 3, 1)
        x = self.mlp(self.norm(x))
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class Stage(nn.Module):
    """Optional downsampling, then blocks; owns the stage's shared positional embedding."""

    def __init__(self, downsample: nn.Module, blocks: list[Block], pos_embed_shape: tuple[int, ...] | None,
                 pos_embed_std: float = 0.02):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)
        self.pos_embed = None
        if pos_embed_shape is not None:
            self.pos_embed = nn.Parameter(torch.empty(pos_embed_shape))
            nn.init.trunc_normal_(self.pos_embed, std=pos_embed_std, a=-2 * pos_embed_std, b=2 * pos_embed_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x, self.pos_embed)
        return x


class Head(nn.Module):
    """Global average pool -> norm -> dropout -> Linear; ``pre_logits`` stops before the Linear."""

    def __init__(self, dim: int, num_classes: int, norm: str, drop_rate: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6) if norm == "layernorm" else nn.Identity()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.norm(x.mean((2, 3))))
        return x if pre_logits else self.fc(x)


def init_weights(module: nn.Module) -> None:
    """ConvNeXt's initialisation: trunc-normal(0.02) for conv (peripheral too) and linear weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear, runtime.PeripheralConv2d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def count_params(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


__all__ = ["Block", "DenseMixer", "DropPath", "Head", "LayerNorm2d", "Mlp", "PeripheralMixer",
           "Stage", "StripeMixer", "count_params", "init_weights", "make_norm2d"]
