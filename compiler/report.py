"""A one-page, self-contained HTML report of a model: the page a researcher pastes into a review.

Sections: the totals (dense and non-zero parameters, MACs, fingerprint), the
stage table of ``compile_spec``, one kernel picture per stage (the sharing
grid of a peripheral kernel, paper Fig. 1b), optionally the ERF heatmap with
its area ratios (paper Fig. 4), and the spec as YAML. CSS is inline and the
pictures are PNG data URIs: the file needs nothing else. Every text is
escaped with ``html.escape``.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from archspec import SharingGrid, dump_spec
from archspec.files import atomic_write_text
from compiler.build import CompiledSpec, compile_spec
from compiler.erf import ErfResult
from compiler.passes import STAGE_HEADERS, human, stage_table_text

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1b1b1b; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f4f8; } td.text { text-align: left; }
.stages { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; text-align: center; } figure img { width: 240px; }
figcaption { font-size: 0.8em; color: #444; max-width: 240px; }
img.erf { width: 420px; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 0.8em; font-size: 0.8em; overflow-x: auto; }
"""


@dataclass
class StagePicture:
    """A stage's kernel picture (PNG bytes) and its caption."""

    stage: int
    png: bytes
    caption: str


def _pelk_version() -> str:
    try:
        return version("pelk")
    except PackageNotFoundError:
        return "unknown"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def stage_pictures(compiled: CompiledSpec) -> list[StagePicture]:
    """One kernel picture per stage: sharing grid (peripheral), K x K (dense) or K x N + N x K (stripe)."""
    from compiler.figures import figure_png, kernel_axes, plt
    pictures = []
    for row, stage in zip(compiled.stages, compiled.spec.stages):
        figure, axes = plt.subplots(figsize=(3.2, 3.2))
        kernel_axes(axes, row["mixer"], row["kernel"], grid=row.get("grid"),
                    short_side=getattr(stage.mixer, "short_side", None), title=f"stage {row['stage']}")
        pictures.append(StagePicture(row["stage"], figure_png(figure, dpi=110), _kernel_caption(row)))
    return pictures


def _kernel_caption(row: dict) -> str:
    kernel = row["kernel"]
    if row["mixer"] == "peripheral":
        shared = SharingGrid(tuple(row["grid"]))
        return (f"peripheral {kernel}x{kernel}: grid {list(shared.half)} (half, centre outwards), "
                f"k'={shared.k_prime}, {shared.k_prime ** 2} weights per channel ({shared.param_ratio:.1%} of dense)")
    return f"{row['mixer']} {kernel}x{kernel}"


def _cell(value: object, text: bool = False) -> str:
    css = ' class="text"' if text else ""
    return f"<td{css}>{html.escape(str(value))}</td>"


def _table(headers: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    head = "".join(f"<th>{html.escape(header)}</th>" for header in headers)
    body = "".join("<tr>" + "".join(_cell(value, index < text_columns) for index, value in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def stage_rows(compiled: CompiledSpec) -> list[list[str]]:
    """The stage table as text cells (the columns of ``pelk build``, exact parameter counts)."""
    return stage_table_text(compiled.stages, exact_params=True)


def totals_rows(compiled: CompiledSpec) -> list[list[str]]:
    totals = compiled.totals
    params, macs, density = totals["params"], totals["macs"], totals["density"]
    return [
        ["parameters, dense (every learnable tensor, positional embedding included)",
         f"{params['dense']:,} ({human(params['dense'])})"],
        [f"parameters, non-zero at density {density:g}, positional embedding excluded (the paper's count)",
         f"{params['nonzero']:,} ({human(params['nonzero'])})"],
        ["kernel-wise positional embedding", f"{params['pos_embed']:,}"],
        [f"MACs at density {density:g} (the paper's count)", human(macs["at_density"])],
        ["MACs, dense", human(macs["total"])],
    ]


def erf_section(result: ErfResult) -> str:
    """ERF heatmap and area-ratio table of one model."""
    from compiler.figures import erf_figure, figure_png
    png = figure_png(erf_figure([(result.label, result.display)]), dpi=110)
    rows = []
    for key, found in result.ratios.items():
        rows.append([key, "n/a" if found is None else f"{found['side']}x{found['side']}",
                     "n/a" if found is None else f"{found['ratio']:.4f}"])
    note = ("Contribution of every input pixel to the central point of the last stage (RepLKNet / SLaK method), "
            f"averaged over {len(result.images)} image(s) at {result.size}x{result.size}; log10(x + 1), "
            "max-normalised. Area ratio at t: the smallest centred square holding more than t of the total. "
            "A freshly initialised model (layer scale 1e-6) shows the stem's footprint only: trained weights "
            "(a build directory) are what the paper's Fig. 4 shows.")
    return (f"<h2>Effective receptive field</h2><p class=\"meta\">{html.escape(note)}</p>"
            f"<img class=\"erf\" alt=\"ERF heatmap of {html.escape(result.label)}\" src=\"{data_uri(png)}\">"
            + _table(["threshold t", "square", "area ratio"], rows))


def report_html(compiled: CompiledSpec, source: str, erf: ErfResult | None = None) -> str:
    """The whole page as a string."""
    spec = compiled.spec
    pictures = "".join(
        f"<figure><img alt=\"kernel of stage {picture.stage}\" src=\"{data_uri(picture.png)}\">"
        f"<figcaption>{html.escape(picture.caption)}</figcaption></figure>"
        for picture in stage_pictures(compiled))
    description = f"<p>{html.escape(spec.description)}</p>" if spec.description else ""
    meta = (f"source {source} | fingerprint {compiled.fingerprint} | resolution {compiled.totals['resolution']} "
            f"| generated by pelk {_pelk_version()}")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(spec.name)} - pelk report</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(spec.name)}</h1>", description, f'<p class="meta">{html.escape(meta)}</p>',
        "<h2>Totals</h2>", _table(["quantity", "value"], totals_rows(compiled)),
        "<h2>Stages</h2>", _table(STAGE_HEADERS, stage_rows(compiled), text_columns=0),
        "<h2>Kernels</h2>", f'<div class="stages">{pictures}</div>',
    ]
    if erf is not None:
        parts.append(erf_section(erf))
    parts += ["<h2>Spec</h2>", f"<pre>{html.escape(dump_spec(spec))}</pre>", "</body></html>"]
    return "\n".join(part for part in parts if part) + "\n"


def write_report(source: str | Path, out: str | Path, resolution: int | None = None,
                 erf_images: list[Path] | None = None, erf_size: int = 1024, backend: str = "auto",
                 progress: bool = True, device: str = "cpu") -> tuple[Path, CompiledSpec, ErfResult | None]:
    """Write the report of a build directory or spec atomically; with ``erf_images`` the ERF is measured too
    (on ``device``)."""
    from compiler.build import resolve_model
    from compiler.erf import model_erf, model_label, resolve_device
    model = None
    path = Path(source)
    if path.is_dir() or path.suffix == ".pt" or erf_images is not None:
        model = resolve_model(source, backend=backend)
        spec = model.spec
    else:
        spec = source
    compiled = compile_spec(spec, resolution)
    erf = None
    if erf_images is not None:
        model = model.to(resolve_device(device, backend))
        erf = model_erf(model, str(source), erf_images, erf_size, model_label(source), progress)
    return atomic_write_text(out, report_html(compiled, str(source), erf)), compiled, erf


__all__ = ["STAGE_HEADERS", "data_uri", "erf_section", "report_html", "stage_pictures", "stage_rows", "totals_rows",
           "write_report"]
