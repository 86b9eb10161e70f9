"""Kernel scaling study (paper Sec. 6.4, Fig. 6): parameters against kernel size.

"We simply replace all the kernels in stages of ConvNeXt-T with a set of
kernel sizes from 7 to 151 and report the required number of parameters."
Every stage of ConvNeXt-T (dims 96-192-384-768, depths 3-3-9-3) gets a K x K
kernel in one of three forms, and nothing else changes (conv with bias as in
ConvNeXt, all channels, no parallel small kernel, no sparsity):

* dense       a K x K depthwise kernel: K^2 weights per channel;
* stripe      SLaK's decomposed form K x 5 + 5 x K (two depthwise stripes,
              short side 5, the paper's "51 x 5 + 5 x 51"): 10K per channel;
* peripheral  PeLK's sharing grid (5 x 5 unshared centre, base 2, greedy
              remainder) on every channel: k'^2 per channel. The kernel-wise
              positional embedding is left out, as in the paper's counts.

The counts are the compiler's own (``compile_spec`` totals), so they agree
with ``pelk build``.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from archspec import ModelSpec, resolve_spec
from archspec.files import atomic_write_text
from compiler.build import compile_spec
from compiler.passes import human

FORMS = ("dense", "stripe", "peripheral")
SMALLEST_KERNEL = 7  # the stripe's short side 5 and the peripheral 5 x 5 centre must be smaller than K
MAX_KERNEL_COUNT = 1000  # about 15 s of compiling; 7..151 is 73


class KernelRangeError(ValueError):
    """A --kernels value that cannot be used; the message says why."""


def parse_kernels(text: str) -> list[int]:
    """Kernel sizes from ``A..B`` (odd A..B, step 2), ``A..B:S`` (step S) or ``A,B,C``; sorted, unique.

    Every size must be odd and at least 7; at most 1000 sizes.
    """
    text = text.strip()
    kernels: list[int] = []
    too_many = KernelRangeError(f"{text!r}: more than {MAX_KERNEL_COUNT} kernel sizes; use a larger step")
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        match = re.fullmatch(r"(\d+)\.\.(\d+)(?::(\d+))?", part)
        if match:
            start, stop, step = int(match[1]), int(match[2]), int(match[3] or 2)
            if stop < start:
                raise KernelRangeError(f"{part!r}: the range ends ({stop}) before it starts ({start})")
            if step < 1 or step % 2:
                raise KernelRangeError(f"{part!r}: the step must be a positive even number "
                                       f"(kernels are odd), got {step}")
            if (stop - start) // step + 1 > MAX_KERNEL_COUNT:
                raise too_many
            kernels.extend(range(start, stop + 1, step))
        elif part.isdigit():
            kernels.append(int(part))
        else:
            raise KernelRangeError(f"{part!r}: expected a kernel size (51), a range (7..151) "
                                   f"or a range with a step (7..151:4)")
    if not kernels:
        raise KernelRangeError(f"{text!r}: no kernel sizes given")
    if len(set(kernels)) > MAX_KERNEL_COUNT:
        raise too_many
    bad = sorted({kernel for kernel in kernels if kernel % 2 == 0 or kernel < SMALLEST_KERNEL})
    if bad:
        raise KernelRangeError(f"{text!r}: kernel sizes must be odd and at least {SMALLEST_KERNEL} "
                               f"(the stripe's short side and the peripheral centre are 5), got {bad}")
    return sorted(set(kernels))


def _mixer(form: str, kernel: int) -> dict:
    common = {"kernel_size": kernel, "small_kernel": None, "partial_ratio": 1.0, "norm": "none"}
    if form == "dense":
        return {"type": "dense", **common}
    if form == "stripe":
        return {"type": "stripe", "short_side": 5, **common}
    return {"type": "peripheral", "sharing": {"center": 5, "base": 2, "remainder": "greedy"},
            "pos_embed": {"enabled": False}, **common}


def scaled_spec(form: str, kernel: int, base: str = "convnext_t") -> ModelSpec:
    """ConvNeXt-T with every stage's kernel replaced by a K x K kernel of ``form``."""
    data = resolve_spec(base).model_dump()
    data["name"] = f"{data['name']}_{form}_{kernel}"
    for stage in data["stages"]:
        stage["mixer"] = _mixer(form, kernel)
    return ModelSpec.model_validate(data)


@dataclass
class ScalingRow:
    """Parameters of ConvNeXt-T at one kernel size, per kernel form."""

    kernel: int
    params: dict[str, int]


def scaling_study(kernels: list[int]) -> list[ScalingRow]:
    """Parameter counts of ConvNeXt-T for every kernel size and form (positional embedding excluded)."""
    rows = []
    for kernel in kernels:
        params = {}
        for form in FORMS:
            counts = compile_spec(scaled_spec(form, kernel)).totals["params"]
            params[form] = counts["dense"] - counts["pos_embed"]
        rows.append(ScalingRow(kernel, params))
    return rows


def scaling_csv(rows: list[ScalingRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["kernel", *(f"{form}_params" for form in FORMS)])
    for row in rows:
        writer.writerow([row.kernel, *(row.params[form] for form in FORMS)])
    return buffer.getvalue()


def draw_scaling(rows: list[ScalingRow], path: str | Path) -> Path:
    """Fig. 6: parameters (millions) of ConvNeXt-T against kernel size, one line per form."""
    from compiler.figures import plt, save_figure
    figure, axes = plt.subplots(figsize=(6, 4.2))
    styles = {"dense": ("#d62728", "o", "dense K x K"), "stripe": ("#ff7f0e", "s", "stripe K x 5 + 5 x K (SLaK)"),
              "peripheral": ("#1f77b4", "^", "peripheral (PeLK)")}
    kernels = [row.kernel for row in rows]
    marker_every = max(1, len(rows) // 12)
    for form in FORMS:
        color, marker, label = styles[form]
        axes.plot(kernels, [row.params[form] / 1e6 for row in rows], color=color, marker=marker,
                  markevery=marker_every, markersize=4, linewidth=1.6, label=label)
    axes.set_xlabel("kernel size K (all four stages)")
    axes.set_ylabel("parameters (M)")
    axes.set_title("ConvNeXt-T with every kernel replaced (paper Fig. 6)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, path)


def table_path(png_path: str | Path) -> Path:
    """Where the table of a scaling PNG goes: beside it, ``.csv``."""
    return Path(png_path).with_suffix(".csv")


def write_scaling(kernels: list[int], out: str | Path) -> tuple[list[ScalingRow], Path, Path]:
    """Run the study and write the PNG at ``out`` and its CSV table beside it (both atomically)."""
    rows = scaling_study(kernels)
    png = draw_scaling(rows, out)
    table = atomic_write_text(table_path(out), scaling_csv(rows))
    return rows, png, table


def scaling_table_rows(rows: list[ScalingRow]) -> list[dict]:
    """Rows for a printed table: exact counts and the ratio of peripheral to dense."""
    return [{"kernel": row.kernel, **{form: f"{row.params[form]:,} ({human(row.params[form])})" for form in FORMS},
             "peripheral/dense": f"{row.params['peripheral'] / row.params['dense']:.3f}"} for row in rows]


__all__ = ["FORMS", "KernelRangeError", "ScalingRow", "draw_scaling", "parse_kernels",
           "scaled_spec", "scaling_csv", "scaling_study", "scaling_table_rows", "table_path", "write_scaling"]
