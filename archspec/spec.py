"""The spec language: pydantic v2 models of a large-kernel ConvNet.

Every model forbids unknown keys; every field carries a docstring, which
becomes its description in the JSON schema (`pelk schema`). Mixers are a
discriminated union on ``type``. Cross-field rules fail with messages that
quote the offending values. Nothing here imports torch.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from archspec import grid as sharing


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys rejected, field docstrings in the schema."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True,
                              validate_assignment=True, frozen=False)


Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


def _require_odd(value: int | None, what: str) -> int | None:
    if value is not None and value % 2 == 0:
        raise ValueError(f"{what} must be odd (same padding needs a centre), got {value}")
    return value


class InputSpec(SpecModel):
    """What the network is fed."""

    resolution: int = Field(224, ge=32, le=8192)
    """Input height and width in pixels (square images); stats and search use it."""
    channels: int = Field(3, ge=1)
    """Input channels (3 for RGB)."""


class WidthSpec(SpecModel):
    """How the base stage dims are widened (SLaK/PeLK use 1.3x)."""

    factor: float = Field(1.0, gt=0.0, le=16.0)
    """Multiplier applied to every stage's base dim."""
    rounding: Literal["floor", "round", "ceil"] = "floor"
    """How the widened dim becomes an integer; ``floor`` is Python ``int()``, the paper's rule."""
    multiple_of: int = Field(1, ge=1)
    """After rounding, dims are rounded down to a multiple of this (1 = no effect)."""

    def apply(self, dim: int) -> int:
        """The widened dim of a base dim: e.g. 96 -> 124 at factor 1.3, floor."""
        scaled = dim * self.factor
        # A tiny epsilon keeps 1.3 * 100 = 129.99999999999997 from flooring to 129.
        rounded = {"floor": math.floor(scaled + 1e-9), "round": round(scaled),
                   "ceil": math.ceil(scaled - 1e-9)}[self.rounding]
        return max(self.multiple_of, rounded // self.multiple_of * self.multiple_of)


class StemSpec(SpecModel):
    """The patchify stem: conv k x k stride s, then a norm."""

    kernel_size: int = Field(4, ge=1)
    """Stem convolution kernel size."""
    stride: int = Field(4, ge=1)
    """Stem convolution stride (the stem's reduction)."""
    norm: Literal["layernorm", "batchnorm", "none"] = "layernorm"
    """Norm after the stem convolution."""


class DownsampleSpec(SpecModel):
    """Between stages: a norm, then conv k x k stride s."""

    kernel_size: int = Field(2, ge=1)
    """Downsampling convolution kernel size."""
    stride: int = Field(2, ge=1)
    """Downsampling stride."""
    norm: Literal["layernorm", "batchnorm", "none"] = "layernorm"
    """Norm before the downsampling convolution."""


class SharingSpec(SpecModel):
    """The sharing grid of a peripheral kernel (Eq. 1, 2), or an explicit grid."""

    center: int = Field(5, ge=1)
    """Side of the central fine-grained (unshared) square: 5 for PeLK, 7 for PeLK-101."""
    base: int = Field(2, ge=2, le=16)
    """Base m of the exponentially growing cells (m^1, m^2, ...)."""
    remainder: Literal["greedy", "merge"] = "greedy"
    """What happens to the part of the radius the exponential cells do not fill:
    ``greedy`` makes it the outermost cell (the paper's grids), ``merge`` folds a
    leftover smaller than its inner neighbour into that neighbour."""
    grid: list[int] | None = None
    """Explicit full grid (edge to edge, summing to the kernel size); overrides the rule above."""

    _check_center = field_validator("center")(lambda v: _require_odd(v, "sharing.center"))


class PosEmbedSpec(SpecModel):
    """Kernel-wise positional embedding (Eq. 3), one per stage, shared by its blocks."""

    enabled: bool = True
    """Add the positional embedding h (C x K x K) to every tap."""
    mode: Literal["padded", "valid"] = "padded"
    """``padded``: h is added at every tap, padding included (a per-channel constant);
    ``valid``: h is added only where the input exists (a batch-independent map)."""
    init_std: float = Field(0.02, gt=0.0)
    """Standard deviation of the truncated-normal initialisation."""


class PeripheralMixer(SpecModel):
    """PeLK's partial peripheral convolution with a parallel small kernel."""

    type: Literal["peripheral"] = "peripheral"
    """Discriminator."""
    kernel_size: int = Field(..., ge=3)
    """Side K of the large kernel (odd)."""
    sharing: SharingSpec = Field(default_factory=SharingSpec)
    """How the K x K positions share parameters."""
    pos_embed: PosEmbedSpec = Field(default_factory=PosEmbedSpec)
    """Kernel-wise positional embedding."""
    partial_ratio: Fraction = 0.375
    """Share of channels through the peripheral conv (the rest are identity): g = int(C * ratio)."""
    small_kernel: int | None = Field(5, ge=1)
    """Side of the parallel small kernel re-parameterised into the large one; null for none."""
    norm: Literal["batchnorm", "none"] = "batchnorm"
    """Norm after each kernel branch (batchnorm folds away at deploy)."""

    _check_kernel = field_validator("kernel_size")(lambda v: _require_odd(v, "kernel_size"))
    _check_small = field_validator("small_kernel")(lambda v: _require_odd(v, "small_kernel"))

    @model_validator(mode="after")
    def _check_grid(self) -> "PeripheralMixer":
        if self.sharing.grid is not None:
            try:
                sharing.validate_grid(self.sharing.grid, self.kernel_size)
            except sharing.GridError as error:
                raise ValueError(f"sharing.grid: {error}") from None
        elif self.sharing.center >= self.kernel_size:
            raise ValueError(f"sharing.center {self.sharing.center} must be smaller than "
                             f"kernel_size {self.kernel_size} (use a dense mixer for no sharing)")
        if self.small_kernel is not None:
            unshared = self.resolved_grid().unshared_center
            if self.small_kernel > unshared:
                raise ValueError(
                    f"small_kernel {self.small_kernel} is wider than the unshared centre "
                    f"{unshared}x{unshared} of grid {list(self.resolved_grid().grid)}: it could not "
                    f"be folded into the peripheral weights at deploy")
        return self

    def resolved_grid(self) -> sharing.SharingGrid:
        """The full sharing grid this mixer uses."""
        if self.sharing.grid is not None:
            return sharing.SharingGrid(tuple(self.sharing.grid))
        return sharing.SharingGrid(tuple(sharing.full_grid(
            self.kernel_size, self.sharing.center, self.sharing.base, self.sharing.remainder)))


class DenseMixer(SpecModel):
    """A dense K x K depthwise convolution (ConvNeXt 7x7, RepLKNet 31x31 + 5x5)."""

    type: Literal["dense"] = "dense"
    """Discriminator."""
    kernel_size: int = Field(..., ge=1)
    """Side K of the depthwise kernel (odd)."""
    small_kernel: int | None = Field(None, ge=1)
    """Parallel small kernel (RepLKNet's 5x5); null for none."""
    partial_ratio: Fraction = 1.0
    """Share of channels through the conv; the rest are identity."""
    norm: Literal["batchnorm", "none"] = "none"
    """``none``: conv with bias (ConvNeXt); ``batchnorm``: conv + BN per branch (RepLKNet)."""

    _check_kernel = field_validator("kernel_size")(lambda v: _require_odd(v, "kernel_size"))
    _check_small = field_validator("small_kernel")(lambda v: _require_odd(v, "small_kernel"))

    @model_validator(mode="after")
    def _check_small_fits(self) -> "DenseMixer":
        if self.small_kernel is not None and self.small_kernel > self.kernel_size:
            raise ValueError(f"small_kernel {self.small_kernel} is larger than kernel_size {self.kernel_size}")
        return self


class StripeMixer(SpecModel):
    """SLaK's decomposed kernel: K x N and N x K stripes (+ N x N small kernel), each + BN."""

    type: Literal["stripe"] = "stripe"
    """Discriminator."""
    kernel_size: int = Field(..., ge=3)
    """Long side K of the stripes (odd)."""
    short_side: int = Field(5, ge=1)
    """Short side N of the stripes (odd)."""
    small_kernel: int | None = Field(5, ge=1)
    """Parallel N x N kernel; null for none."""
    partial_ratio: Fraction = 1.0
    """Share of channels through the conv; the rest are identity."""
    norm: Literal["batchnorm", "none"] = "batchnorm"
    """Norm after each branch."""

    _check_kernel = field_validator("kernel_size")(lambda v: _require_odd(v, "kernel_size"))
    _check_short = field_validator("short_side")(lambda v: _require_odd(v, "short_side"))
    _check_small = field_validator("small_kernel")(lambda v: _require_odd(v, "small_kernel"))

    @model_validator(mode="after")
    def _check_sides(self) -> "StripeMixer":
        if self.short_side >= self.kernel_size:
            raise ValueError(f"short_side {self.short_side} must be smaller than kernel_size {self.kernel_size}")
        if self.small_kernel is not None and self.small_kernel > self.kernel_size:
            raise ValueError(f"small_kernel {self.small_kernel} is larger than kernel_size {self.kernel_size}")
        return self


Mixer = Annotated[Union[PeripheralMixer, DenseMixer, StripeMixer], Field(discriminator="type")]


class StageSpec(SpecModel):
    """One stage: ``depth`` blocks at one resolution."""

    depth: int = Field(..., ge=1, le=256)
    """Number of blocks."""
    dim: int = Field(..., ge=1)
    """Base channel count, before the width factor (ConvNeXt-T: 96, 192, 384, 768)."""
    mixer: Mixer
    """The spatial (large-kernel) mixer of every block of the stage."""
    mlp_ratio: float = Field(4.0, gt=0.0)
    """Hidden width of the MLP as a multiple of the stage dim."""
    layer_scale_init: float | None = Field(1e-6, ge=0.0)
    """Initial layer-scale value (null disables layer scale)."""
    drop_path: float | None = Field(None, ge=0.0, lt=1.0)
    """Fixed stochastic-depth rate for this stage's blocks; null follows the model's linear schedule."""


SPARSITY_TARGETS = ("stem", "downsample", "large_kernel", "small_kernel", "mlp", "head")


class SparsitySpec(SpecModel):
    """SLaK's dynamic sparsity: masks on weights, prune-and-regrow during training."""

    enabled: bool = False
    """Train sparse; counts report non-zero parameters at this sparsity."""
    sparsity: float | None = Field(None, ge=0.0, lt=1.0)
    """Fraction of zero weights (0.4 in SLaK/PeLK). Give this or ``density``."""
    density: float | None = Field(None, gt=0.0, le=1.0)
    """Fraction of non-zero weights (1 - sparsity). Give this or ``sparsity``."""
    init: Literal["snip", "erk", "uniform"] = "snip"
    """How per-layer densities are set at the start."""
    prune_rate: float = Field(0.3, ge=0.0, lt=1.0)
    """Fraction of a layer's active weights pruned (and regrown) at each update."""
    update_interval: int = Field(100, ge=1)
    """Optimizer steps between prune-and-regrow updates."""
    growth: Literal["random", "gradient"] = "random"
    """How regrown weights are chosen."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Decay of the prune rate over training."""
    targets: list[Literal["stem", "downsample", "large_kernel", "small_kernel", "mlp", "head"]] = Field(
        default_factory=lambda: list(SPARSITY_TARGETS))
    """Which weights carry masks (every 2-D/4-D weight by default, as SLaK)."""

    @model_validator(mode="after")
    def _one_of(self) -> "SparsitySpec":
        if self.sparsity is not None and self.density is not None:
            if not math.isclose(self.sparsity + self.density, 1.0, abs_tol=1e-9):
                raise ValueError(f"sparsity {self.sparsity} and density {self.density} do not add up to 1")
        if self.enabled and self.sparsity is None and self.density is None:
            raise ValueError("enabled sparsity needs `sparsity` or `density`")
        return self

    @property
    def effective_density(self) -> float:
        """Density applied to targeted weights (1.0 when disabled)."""
        if not self.enabled:
            return 1.0
        return self.density if self.density is not None else 1.0 - self.sparsity


class HeadSpec(SpecModel):
    """Classifier: global average pool, norm, (dropout), linear."""

    num_classes: int = Field(1000, ge=0)
    """Output classes (0 gives a feature extractor with no classifier)."""
    norm: Literal["layernorm", "none"] = "layernorm"
    """Norm after pooling."""
    drop_rate: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout before the classifier."""


class ModelSpec(SpecModel):
    """A complete large-kernel ConvNet."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    """Model name (letters, digits, ``_ . -``): used for files and registries."""
    description: str = ""
    """Free text: where the architecture comes from."""
    input: InputSpec = Field(default_factory=InputSpec)
    """Input resolution and channels."""
    width: WidthSpec = Field(default_factory=WidthSpec)
    """Width factor and rounding rule."""
    stem: StemSpec = Field(default_factory=StemSpec)
    """Patchify stem."""
    downsample: DownsampleSpec = Field(default_factory=DownsampleSpec)
    """Downsampling between stages."""
    stages: list[StageSpec] = Field(..., min_length=1, max_length=8)
    """Stages in order."""
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    """Stochastic depth, increasing linearly over all blocks from 0 to this (timm's rule)."""
    sparsity: SparsitySpec = Field(default_factory=SparsitySpec)
    """Dynamic sparsity settings."""
    head: HeadSpec = Field(default_factory=HeadSpec)
    """Classifier head."""

    @model_validator(mode="after")
    def _check_widths(self) -> "ModelSpec":
        for index, stage in enumerate(self.stages):
            dim = self.width.apply(stage.dim)
            channels = int(dim * stage.mixer.partial_ratio)
            if channels < 1:
                raise ValueError(
                    f"stages[{index}]: partial_ratio {stage.mixer.partial_ratio} of dim {dim} "
                    f"leaves 0 channels for the {stage.mixer.type} kernel")
        reduction = self.total_reduction()
        if self.input.resolution < reduction:
            raise ValueError(f"input.resolution {self.input.resolution} is smaller than the total "
                             f"reduction {reduction} of stem and {len(self.stages) - 1} downsamplings")
        return self

    def total_reduction(self) -> int:
        """Input pixels per last-stage pixel along a side: the stem's stride times every downsampling's."""
        return self.stem.stride * self.downsample.stride ** (len(self.stages) - 1)

    def stage_dims(self) -> list[int]:
        """Channels of every stage after the width factor."""
        return [self.width.apply(stage.dim) for stage in self.stages]

    def mixer_channels(self) -> list[int]:
        """Channels through each stage's kernel (g = int(C * partial_ratio))."""
        return [int(dim * stage.mixer.partial_ratio) for dim, stage in zip(self.stage_dims(), self.stages)]

    def kernel_sizes(self) -> list[int]:
        return [stage.mixer.kernel_size for stage in self.stages]

    def drop_path_rates(self) -> list[list[float]]:
        """Per-stage, per-block drop-path rates."""
        total = sum(stage.depth for stage in self.stages)
        linear = [self.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        rates, start = [], 0
        for stage in self.stages:
            block_rates = linear[start:start + stage.depth]
            if stage.drop_path is not None:
                block_rates = [stage.drop_path] * stage.depth
            rates.append(block_rates)
            start += stage.depth
        return rates
