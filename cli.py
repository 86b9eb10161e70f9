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
            raise UserError(f"{error.filename or ''}: {error.strerror or error}") from None


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
    if center >= kernel_size:
        raise UserError(f"--center {center} must be smaller than the kernel size {kernel_size}")
    shared = SharingGrid(tuple(full_grid(kernel_size, center, base, policy)))
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


def _format_stage_rows(stages: list[dict]) -> list[dict]:
    from compiler.passes import human
    rows = []
    for stage in stages:
        grid_text = SharingGrid(tuple(stage["grid"])).half if stage.get("grid") else "-"
        rows.append({"stage": stage["stage"], "depth": stage["depth"], "mixer": stage["mixer"],
                     "kernel": stage["kernel"], "grid": grid_text, "k'": stage.get("k_prime") or "-",
                     "dim": stage["dim"], "channels": stage["channels"],
                     "map": f"{stage['feature_map']}x{stage['feature_map']}",
                     "covers": f"{'yes' if stage['covers'] else 'no'} ({stage['coverage']:.2f})",
                     "dense": human(stage["params_dense"]), "nonzero": human(stage["params_nonzero"]),
                     "macs": human(stage["macs_at_density"])})
    return rows


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
    from compiler.passes import human
    started = time.perf_counter()
    compiled = compile_spec(spec, resolution)
    click.echo(f"{compiled.spec.name}  fingerprint {compiled.fingerprint}  resolution {compiled.totals['resolution']}")
    columns = [(key, key) for key in ("stage", "depth", "mixer", "kernel", "grid", "k'", "dim", "channels",
                                      "map", "covers", "dense", "nonzero", "macs")]
    echo_table(_format_stage_rows(compiled.stages), columns)
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


if __name__ == "__main__":
    sys.exit(main())
