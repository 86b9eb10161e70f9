"""`pelk`: the command line. Thin: every command calls archspec / compiler / runtime.

A user mistake (bad spec, bad argument, unreadable file) prints a message
naming the file, line and field and exits non-zero, never with a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from archspec import GridError, SharingGrid, SpecError, full_grid, load_spec
from archspec.files import atomic_write_text


class UserError(click.ClickException):
    """An error caused by the user's input; shown without a traceback, exit code 1."""

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input is wrong", not "pelk is broken"."""
    from compiler.build import BuildError
    from compiler.passes import LintError
    return SpecError, GridError, BuildError, LintError


class PelkGroup(click.Group):
    """Turns user errors raised by any command into clean messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except user_errors() as error:
            raise UserError(str(error)) from None
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            raise UserError(f"{where}{error.strerror or error}") from None


@click.group(cls=PelkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pelk")
def main() -> None:
    """pelk: compile, analyse and search large-kernel ConvNets built on peripheral convolution."""


def echo_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Print rows as an aligned text table; ``columns`` are (key, header)."""
    cells = [[header for _, header in columns]] + [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    widths = [max(len(line[index]) for line in cells) for index in range(len(columns))]
    for number, line in enumerate(cells):
        click.echo("  ".join(cell.rjust(width) for cell, width in zip(line, widths)))
        if number == 0:
            click.echo("  ".join("-" * width for width in widths))


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def validate(specs: tuple[Path, ...]) -> None:
    """Check spec files; report every problem as FILE:LINE: field: message."""
    from compiler import compile_spec
    failed = 0
    for path in specs:
        try:
            compiled = compile_spec(load_spec(path))
        except SpecError as error:
            failed += 1
            click.echo(str(error), err=True)
            continue
        except user_errors() as error:  # the spec parses but its graph does not lint (e.g. an empty feature map)
            failed += 1
            click.echo(f"{path}: {error}", err=True)
            continue
        click.echo(f"ok  {path}  ({compiled.spec.name}, fingerprint {compiled.fingerprint})")
    if failed:
        raise UserError(f"{failed} of {len(specs)} spec(s) invalid")


@main.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the schema here, not to stdout.")
def schema(out: Path | None) -> None:
    """Print the JSON schema of the spec language (for editor autocompletion)."""
    from archspec.spec import ModelSpec
    text = json.dumps(ModelSpec.model_json_schema(), indent=2) + "\n"
    if out is None:
        click.echo(text, nl=False)
    else:
        atomic_write_text(out, text)
        click.echo(f"wrote {out}")


@main.command()
@click.argument("kernel_size", type=click.IntRange(min=1))
@click.option("--center", default=5, show_default=True, type=click.IntRange(min=1),
              help="Side of the unshared central square.")
@click.option("--base", default=2, show_default=True, type=click.IntRange(min=2), help="Exponential base m.")
@click.option("--policy", default="greedy", show_default=True, type=click.Choice(["greedy", "merge"]),
              help="Remainder policy.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), help="Draw the kernel partition here.")
def grid(kernel_size: int, center: int, base: int, policy: str, as_json: bool, png: Path | None) -> None:
    """Show the sharing grid of a K x K peripheral kernel (paper Eq. 1, 2)."""
    shared = SharingGrid(tuple(full_grid(kernel_size, center, base, policy)))  # GridError: K or centre invalid
    if center >= kernel_size:
        raise UserError(f"--center {center} must be smaller than the kernel size {kernel_size}")
    info = dict(shared.as_dict(), center=center, base=base, policy=policy)
    if png is not None:
        from compiler.figures import draw_grid
        draw_grid(shared.grid, png)
        info["png"] = str(png)
    if as_json:
        click.echo(json.dumps(info))
        return
    click.echo(f"kernel {kernel_size}x{kernel_size}, centre {center}x{center}, base {base}, policy {policy}")
    click.echo(f"half grid   {shared.half}")
    click.echo(f"full grid   {list(shared.grid)}")
    click.echo(f"k'          {shared.k_prime}  ({shared.k_prime ** 2} shared weights per channel "
               f"instead of {kernel_size ** 2})")
    click.echo(f"param ratio {shared.param_ratio:.4f}  ({shared.param_ratio:.2%} of dense)")
    if png is not None:
        click.echo(f"wrote {png}")


@main.command()
@click.argument("spec")
@click.option("--resolution", type=click.IntRange(min=8), help="Input resolution for shapes and MACs "
              "(default: the spec's).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write weights, IR (JSON, GraphML) and summary.json here (atomically).")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "torch", "sat", "triton"]), help="Peripheral-conv backend.")
def build(spec: str, resolution: int | None, out: Path | None, backend: str) -> None:
    """Compile SPEC (a YAML file or preset name): stage table, counts, and optionally a build directory."""
    from compiler import build_model, compile_spec, write_build
    from compiler.passes import STAGE_HEADERS, human, stage_table_text
    started = time.perf_counter()
    compiled = compile_spec(spec, resolution)
    click.echo(f"{compiled.spec.name}  fingerprint {compiled.fingerprint}  resolution {compiled.totals['resolution']}")
    echo_table([dict(enumerate(row)) for row in stage_table_text(compiled.stages)], list(enumerate(STAGE_HEADERS)))
    totals = compiled.totals
    click.echo(f"params   dense {totals['params']['dense']:,} ({human(totals['params']['dense'])}, positional "
               f"embedding {human(totals['params']['pos_embed'])} included)  |  non-zero "
               f"{totals['params']['nonzero']:,} ({human(totals['params']['nonzero'])}, at density "
               f"{totals['density']:g}, positional embedding excluded: the paper's count)")
    click.echo(f"MACs     {human(totals['macs']['at_density'])} at density {totals['density']:g} "
               f"(the paper's count)  |  {human(totals['macs']['total'])} dense")
    if out is not None:
        model = build_model(compiled.spec, backend=backend)
        write_build(compiled, out, model)
        click.echo(f"wrote {out}/ (model.pt, spec.yaml, ir.json, ir.graphml, summary.json)")
    click.echo(f"built in {time.perf_counter() - started:.1f}s")


@main.command()
@click.argument("spec")
@click.option("--device", default="cuda", show_default=True, type=click.Choice(["cuda", "cpu"]),
              help="Device to decide for (no such device needs to be present).")
@click.option("--resolution", type=click.IntRange(min=8), help="Input resolution (default: the spec's).")
@click.option("--dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Activation dtype the op sees (bf16 under bf16 autocast).")
def backends(spec: str, device: str, resolution: int | None, dtype: str) -> None:
    """Which peripheral-conv backend `auto` runs for each stage of SPEC, and why."""
    import torch
    import runtime
    from compiler import compile_spec
    compiled = compile_spec(spec, resolution)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    rows = []
    for stage in compiled.stages:
        if stage["mixer"] != "peripheral":
            rows.append({"stage": stage["stage"], "kernel": stage["kernel"], "backend": "-",
                         "reason": f"{stage['mixer']} mixer: plain torch convolutions"})
            continue
        size = stage["feature_map"]
        choice = runtime.choose_backend(device, size, size, stage["grid"], torch_dtype)
        rows.append({"stage": stage["stage"], "kernel": stage["kernel"], "map": f"{size}x{size}",
                     "backend": choice.name, "reason": choice.reason})
    click.echo(f"{compiled.spec.name} at {compiled.totals['resolution']}, {device}, {dtype}")
    echo_table(rows, [("stage", "stage"), ("kernel", "kernel"), ("map", "map"), ("backend", "backend"),
                      ("reason", "reason")])


ERF_HELP_WEIGHTS = ("Freshly initialised PeLK/ConvNeXt models (layer scale 1e-6) have a near-trivial ERF (the stem's "
                    "footprint): that is the truth for untrained models. Trained weights (a build directory from "
                    "`pelk build --out DIR`) are what the paper's Fig. 4 shows.")


def _erf_inputs(images: Path | None, num_images: int | None, device: str, backend: str,
                out: Path) -> tuple[list[Path], str]:
    """The images and the concrete device for an ERF, or a UserError saying what is wrong (also when ``out``
    cannot be written: found before measuring, not after)."""
    from compiler.erf import ErfError, check_output, find_images, resolve_device
    try:
        check_output(out)
        return find_images(images, num_images), resolve_device(device, backend).type
    except ErfError as error:
        raise UserError(str(error)) from None


def _erf_image_options(command):
    """--images / --num-images / --size / --backend / --device, shared by `erf` and `report`."""
    options = [
        click.option("--images", type=click.Path(file_okay=False, path_type=Path),
                     help="Directory of images (searched recursively, sorted; e.g. ImageNet val). Default: the "
                          "real photographs shipped with scikit-image, offline."),
        click.option("--num-images", type=click.IntRange(min=1),
                     help="Use the first N images (default: all shipped photographs, or 50 from --images as in "
                          "the paper)."),
        click.option("--size", default=1024, show_default=True, type=click.IntRange(min=8),
                     help="Images are resized to SIZE x SIZE (the paper: 1024)."),
        click.option("--backend", default="auto", show_default=True,
                     type=click.Choice(["auto", "torch", "sat", "triton"]),
                     help="Peripheral-conv backend (auto: the runtime's per-layer choice; sat is the fast exact "
                          "CPU path, triton needs CUDA)."),
        click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
                     help="Where to run the model (auto: CUDA when available)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command(help="Measure effective receptive fields (paper Fig. 4) of one or more models.\n\n"
                   "SOURCES are build directories (trained weights), spec files or preset names. Method of "
                   "RepLKNet and SLaK: gradient of the central point of the last stage w.r.t. the input, ReLU, "
                   "summed over channels and averaged over images; log10(x+1), max-normalised; area ratios at "
                   "t = 20%, 30%, 50%, 99%. Writes erf_<model>.png/.npy, erf_comparison.png (several models) "
                   "and erf.json into --out.\n\n" + ERF_HELP_WEIGHTS)
@click.argument("sources", nargs=-1, required=True)
@_erf_image_options
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output directory (files are written atomically).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def erf(sources: tuple[str, ...], images: Path | None, num_images: int | None, size: int, backend: str,
        device: str, out: Path, quiet: bool) -> None:
    from compiler.erf import ErfError, measure_erfs, ratio_rows, write_erf
    paths, device = _erf_inputs(images, num_images, device, backend, out)
    click.echo(f"{len(paths)} image(s) from {images or 'scikit-image (shipped photographs)'}, size {size}x{size}, "
               f"on {device}")
    try:
        results = measure_erfs(sources, paths, size, backend, progress=not quiet, device=device)
        written = write_erf(results, out)
    except ErfError as error:
        raise UserError(str(error)) from None
    rows = ratio_rows(results)
    echo_table(rows, [(key, key) for key in rows[0]])
    click.echo(f"wrote {', '.join(str(path) for path in written)}")


@main.group()
def plot() -> None:
    """Figures of the paper from the compiler's own numbers."""


@plot.command()
@click.option("--kernels", default="7..151", show_default=True,
              help="Kernel sizes: A..B (odd, step 2), A..B:STEP, or a comma list (51,101,151); odd, >= 7.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="PNG to write; the table goes beside it as .csv.")
def scaling(kernels: str, out: Path) -> None:
    """Parameters of ConvNeXt-T with every kernel replaced, dense vs stripe vs peripheral (paper Fig. 6)."""
    from compiler.plots import FORMS, KernelRangeError, parse_kernels, scaling_table_rows, write_scaling
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: give a .png path (the figure is a PNG; its table goes beside it as .csv)")
    try:
        sizes = parse_kernels(kernels)
    except KernelRangeError as error:
        raise UserError(f"--kernels {error}") from None
    rows, png, table = write_scaling(sizes, out)
    echo_table(scaling_table_rows(rows), [("kernel", "kernel"), *((form, form) for form in FORMS),
                                          ("peripheral/dense", "peripheral/dense")])
    click.echo(f"wrote {png} and {table}")


@main.command(help="Write one self-contained HTML page about a model: totals, stage table, the kernel "
                   "(sharing-grid) picture of every stage, the spec, and with --erf the ERF heatmap and area "
                   "ratios.\n\nSOURCE is a build directory, spec file or preset name. " + ERF_HELP_WEIGHTS)
@click.argument("source")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="HTML file to write.")
@click.option("--resolution", type=click.IntRange(min=8), help="Input resolution for shapes and MACs "
              "(default: the spec's).")
@click.option("--erf", "with_erf", is_flag=True, help="Measure and include the effective receptive field.")
@_erf_image_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def report(source: str, out: Path, resolution: int | None, with_erf: bool, images: Path | None,
           num_images: int | None, size: int, backend: str, device: str, quiet: bool) -> None:
    from compiler.erf import ErfError
    from compiler.report import write_report
    if not with_erf and (images is not None or num_images is not None):
        raise UserError("--images and --num-images choose the ERF's images: add --erf")
    paths, device = _erf_inputs(images, num_images, device, backend, out) if with_erf else (None, "cpu")
    try:
        path, compiled, result = write_report(source, out, resolution, paths, size, backend, progress=not quiet,
                                              device=device)
    except ErfError as error:
        raise UserError(str(error)) from None
    extra = f", ERF over {len(result.images)} image(s) at {size}x{size}" if result else ""
    click.echo(f"wrote {path} ({compiled.spec.name}, {len(compiled.stages)} stages{extra})")


@main.command()
@click.option("--resolution", required=True, type=click.IntRange(min=32), help="Input resolution R to search for.")
@click.option("--base", help="Base spec (YAML file or preset); default: the space's `base`.")
@click.option("--space", help="Search-space YAML file, or the name of a shipped one (specs/spaces/); "
              "default: pelk_t_kernels.")
@click.option("--budget", help="Constraints, e.g. params=30M,macs=6G (non-zero params, MACs at density).")
@click.option("--objectives", help="Comma list from: params, macs, coverage, min_coverage, receptive_field, "
              "latency, erf (default: params,macs,coverage).")
@click.option("--trials", default=200, show_default=True, type=click.IntRange(min=1),
              help="Trials this worker runs (added to what the study already holds).")
@click.option("--storage", help="Study storage: an SQLAlchemy URL (postgresql://user@host/db, shared by several "
              "machines) or a journal file path. Default: DIR/study.journal with --out, else in memory.")
@click.option("--study", "study_name", help="Study name (default: SPACE-BASE-rR); workers with the same storage "
              "and name share one study.")
@click.option("--sampler", default="nsga2", show_default=True, type=click.Choice(["nsga2", "tpe", "random"]))
@click.option("--seed", type=int, help="Sampler seed.")
@click.option("--heartbeat", default=10, show_default=True, type=click.IntRange(min=1),
              help="RDB storages: seconds between worker heartbeats; a trial silent for 3x this is failed "
                   "and re-queued.")
@click.option("--json", "as_json", is_flag=True, help="Print the front as JSON instead of a table.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Write front.json and front/NAME.yaml (one spec per front member) here.")
def search(resolution: int, base: str | None, space: str | None, budget: str | None, objectives: str | None,
           trials: int, storage: str | None, study_name: str | None, sampler: str, seed: int | None,
           heartbeat: int, as_json: bool, out: Path | None) -> None:
    """Search kernel configurations for resolution R: the Pareto front of a multi-objective Optuna study."""
    from compiler.search import (SearchError, default_storage, empty_front_reason, front_document, front_table,
                                 make_config, run_search, write_front)
    try:
        config = make_config(resolution, base=base, space=space, budget=budget, objectives=objectives,
                             trials=trials, storage=storage or default_storage(out), study_name=study_name,
                             sampler=sampler, seed=seed, heartbeat=heartbeat)
        result = run_search(config)
    except SearchError as error:
        raise UserError(str(error)) from None
    written = write_front(result, out) if out is not None else []
    if as_json:
        click.echo(json.dumps(front_document(result), indent=2))
        return
    counts = ", ".join(f"{count} {state}" for state, count in sorted(result.counts.items()))
    click.echo(f"study {config.name()}: {sum(result.counts.values())} trials ({counts}); this run "
               f"{trials} in {result.seconds:.1f}s; Pareto front of {', '.join(o.name for o in config.objectives)}"
               f" at {resolution}x{resolution}: {len(result.front)} member(s)")
    rows, columns = front_table(result)
    if rows:
        echo_table(rows, columns)
    else:
        click.echo(empty_front_reason(result))
    if written:
        click.echo(f"wrote {written[0]} and {len(written) - 1} spec(s) under {out / 'front'}/")


@main.command("deploy")
@click.argument("build_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Deploy directory to write (default: BUILD_DIR-deploy).")
@click.option("--expand", is_flag=True, help="Expand peripheral kernels to plain K x K depthwise nn.Conv2d "
              "(for ONNX and other exporters); default keeps the k' x k' shared weights.")
def deploy_command(build_dir: Path, out: Path | None, expand: bool) -> None:
    """Fold BNs, small kernels and the positional embedding of a build directory's model (deploy form)."""
    from compiler.deploy import deploy_build
    summary = deploy_build(build_dir, out, expand=expand)
    check = summary["check"]
    click.echo(f"{summary['name']}: deploy form{' (expanded to dense K x K convs)' if expand else ''}, params "
               f"{summary['params_training_form']:,} -> {summary['params_deploy_form']:,}")
    click.echo(f"check on a random {tuple(check['input'])} input, every mixer output and the logits: "
               f"max |training - deploy| = {check['max_abs_diff']:.2e} (values up to {check['max_abs_output']:.2e})")
    click.echo(f"wrote {summary['out']}/ (model.pt, spec.yaml, deploy.json)")


@main.command()
@click.argument("spec")
@click.option("--sizes", help="ConvNeXt sizes, comma list: atto, femto, pico, nano, t, s, b, l, xl.")
@click.option("--kernels", help="Per-stage kernel configurations, comma list: 51-49-47-13,101-69-67-13.")
@click.option("--centers", help="Central fine-grained sizes, comma list: 5,7.")
@click.option("--widths", help="Width factors, comma list: 1.0,1.3.")
@click.option("--resolution", type=click.IntRange(min=32), help="Resolution of the variants' specs, MACs and "
              "coverage (default: the spec's).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Family folder (replaced atomically): NAME.yaml per variant, manifest.csv, manifest.json.")
def family(spec: str, sizes: str | None, kernels: str | None, centers: str | None, widths: str | None,
           resolution: int | None, out: Path) -> None:
    """Generate a variant family of SPEC: validated specs plus a manifest, duplicates removed by fingerprint."""
    from compiler.family import FamilyError, generate, write_family
    from compiler.passes import human
    try:
        generated = generate(spec, sizes, kernels, centers, widths, resolution)
        write_family(generated, out)
    except FamilyError as error:
        raise UserError(str(error)) from None
    echo_table([{"name": member["name"], "fingerprint": member["fingerprint"],
                 "kernels": "-".join(map(str, member["kernels"])), "params": human(member["params"]),
                 "macs": human(member["macs"]), "K/H": " ".join(f"{value:.2f}" for value in member["coverage"])}
                for member in generated.members],
               [(key, key) for key in ("name", "fingerprint", "kernels", "params", "macs", "K/H")])
    for duplicate in generated.duplicates:
        click.echo(f"duplicate  {duplicate['name']} = {duplicate['same_as']} (same fingerprint, not written)")
    for invalid in generated.invalid:
        click.echo(f"invalid    {invalid['variant']}: {invalid['reason']}")
    click.echo(f"wrote {len(generated.members)} spec(s), manifest.csv and manifest.json to {out}/")


@main.command("prune")
@click.argument("source")
@click.option("--ratio", required=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Share of every stage's base dim to remove (channels; parameters shrink by about "
                   "1 - (1 - R)^2).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Build directory to write (default: ./NAME_prunedPCT).")
def prune_command(source: str, ratio: float, out: Path | None) -> None:
    """Prune SOURCE (a build directory, spec file or preset) to a slimmer width variant with torch-pruning."""
    from compiler.passes import human
    from compiler.prune import prune_build
    summary = prune_build(source, ratio, out)
    echo_table(summary["stages"], [(key, key) for key in ("stage", "dim", "channels", "hidden")])
    before, after = summary["params_before"], summary["params_after"]
    click.echo(f"params   dense {human(before['dense'])} -> {human(after['dense'])}  |  non-zero "
               f"{human(before['nonzero'])} -> {human(after['nonzero'])}")
    click.echo(f"wrote {summary['out']}/ ({summary['name']}: model.pt, spec.yaml with the new dims, ir.json, "
               f"ir.graphml, summary.json)")


@main.command("export")
@click.argument("source")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="ONNX file to write.")
@click.option("--resolution", type=click.IntRange(min=8), help="Input side R of the exported graph (default: the "
              "spec's).")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(min=13), help="ONNX opset.")
def export_command(source: str, out: Path, resolution: int | None, opset: int) -> None:
    """Export SOURCE (build or deploy directory, spec file or preset) to ONNX; check it in onnxruntime (CPU).

    A training-form model is exported in its expanded deploy form (exact: BNs, small kernels and the
    positional embedding folded into dense depthwise convs). Exits 1 if onnxruntime disagrees with PyTorch.
    """
    from compiler.build import resolve_model
    from compiler.export import ExportError, export_onnx, verify_onnx
    model = resolve_model(source)
    path = export_onnx(model, out, resolution, opset)
    check = verify_onnx(model, path, resolution=resolution)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset}, input (batch, "
               f"{model.in_channels}, {resolution or model.spec.input.resolution}, "
               f"{resolution or model.spec.input.resolution}))")
    click.echo(f"onnxruntime (CPU) vs PyTorch on {tuple(check['input'])}: max |diff| = {check['max_abs_diff']:.2e} "
               f"(tolerance {check['tolerance']:.1e}, max |output| {check['max_abs_output']:.2e})")
    if not check["ok"]:
        raise ExportError(f"{path}: onnxruntime's outputs differ from PyTorch's by {check['max_abs_diff']:.2e}, "
                          f"more than the tolerance {check['tolerance']:.1e}")


if __name__ == "__main__":
    sys.exit(main())
