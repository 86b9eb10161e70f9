"""Kernel-level calibration of the triton backend's forms (GPU).

For every PeLK-T large-kernel layer shape (bench_layers.SHAPES) and dtype, times
side by side in one run, CUDA-graph replays (``do_bench_cudagraph``, no host cost):

* forward: dense cuDNN, the SAT kernels (``sat_taps_triton`` + coefficient map) and the
  Toeplitz kernel (``toeplitz_conv_triton`` + lag kernel) at each block config of ``--configs``,
  the plane-box form (``plane_box_conv_triton`` + column blocks) at each of ``--plane-box-configs``,
  and the box form (``box_conv_triton`` + column blocks) at each of ``--box-conv-configs``, for fp32
  at each tl.dot input precision of ``--fp32-precisions``;
* grad-weight: the SAT tap-sums kernel and the box-products kernel (+ prefix and cell sums).

``runtime.op.TOEPLITZ_TAP_RATIO``, ``BOX_CONV_TAP_RATIO``, ``BOX_CONV_TOEPLITZ_SHARE`` and
``BOX_TAP_RATIO`` are read off this table. It also checks each Toeplitz result against the SAT
result of the same shape, and the box forward and dense cuDNN against float64 (error columns).

    python3 bench/bench_forms.py --out forms.md
    python3 bench/bench_forms.py --stages 3 --dtypes fp32 --configs 32x64x32/4/2,16x64x32/4/2
    python3 bench/bench_forms.py --configs 64x128x32/4/3 --box-configs 32/4/3,32/8/2,16/4/1
    python3 bench/bench_forms.py --stages 1,2 --sat-configs 256/2/1,256/2/4,512/4/8
    python3 bench/bench_forms.py --configs 64x128x32/4/3 --box-conv-configs 128/4/2,64/4/3 --fp32-precisions tf32x3,tf32
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_layers import DTYPES, SHAPES, copy_bandwidth, dense, relative_error  # noqa: E402
from runtime import sat, toeplitz, triton_kernels  # noqa: E402
from runtime.op import sat_tap_count, triton_forms  # noqa: E402

# (block_m, block_n, block_k, num_warps, num_stages) for toeplitz_conv_triton.
CONFIGS = [(64, 64, 32, 4, 3), (64, 128, 32, 4, 3), (64, 128, 32, 8, 4), (64, 256, 32, 8, 3),
           (32, 64, 32, 4, 2), (32, 64, 32, 4, 3), (32, 32, 32, 4, 2), (16, 64, 32, 4, 2), (32, 128, 32, 8, 2)]
# (block_k, num_warps, num_stages) for box_products_triton.
BOX_CONFIGS = [(32, 4, 1), (32, 4, 3)]
# (num_warps, num_stages, row_cells[, max_registers (0: none)[, gather 0/1]]) for plane_box_conv_triton;
# gather 1 times plane_box_lags_triton (R_a gathered from the lag kernel in the kernel).
PLANE_BOX_CONFIGS = [(4, 1, 1), (4, 1, 2)]
# (block_m image rows, num_warps, num_stages) for box_conv_triton.
BOX_CONV_CONFIGS = [(32, 2, 3), (64, 4, 2), (128, 8, 3)]
# (tile_elements, num_warps, col_chunk) for sat_taps_triton.
SAT_CONFIGS = [(256, 2, 8), (256, 2, 1)]


def parse_configs(text: str) -> list[tuple[int, ...]]:
    """'64x128x32/4/3,32/8/2' -> [(64, 128, 32, 4, 3), (32, 8, 2)]."""
    return [tuple(int(v) for v in item.replace("/", "x").split("x")) for item in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the markdown here")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--stages", default="1,2,3,4", help="comma-separated stages of bench_layers.SHAPES")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--configs", help="Toeplitz tiles as MxNxK/warps/stages, comma-separated, "
                                          "e.g. 64x128x32/4/3 (default: CONFIGS)")
    parser.add_argument("--box-configs", help="box grad-weight configs as K/warps/stages, comma-separated, "
                                              "e.g. 32/8/2 (default: BOX_CONFIGS)")
    parser.add_argument("--plane-box-configs", help="plane-box forward configs as warps/stages/most rows of a cell "
                                                    "taken row by row[/register cap, 0 none[/gather R from "
                                                    "the lag kernel 0 or 1]], comma-separated, e.g. "
                                                    "4/1/1/96/1 (default: PLANE_BOX_CONFIGS)")
    parser.add_argument("--box-conv-configs", help="box-form forward configs as rows/warps/stages, "
                                                   "comma-separated, e.g. 128/4/2 (default: BOX_CONV_CONFIGS)")
    parser.add_argument("--fp32-precisions", default="tf32x3",
                        help="tl.dot input precisions the fp32 box form is timed at, e.g. tf32x3,tf32")
    parser.add_argument("--sat-configs", help="SAT forward configs as tile_elements/warps/col_chunk, "
                                              "comma-separated, e.g. 256/2/4 (default: SAT_CONFIGS)")
    args = parser.parse_args()
    configs = parse_configs(args.configs) if args.configs else CONFIGS
    sat_configs = parse_configs(args.sat_configs) if args.sat_configs else SAT_CONFIGS
    box_conv_configs = parse_configs(args.box_conv_configs) if args.box_conv_configs else BOX_CONV_CONFIGS
    plane_box_configs = parse_configs(args.plane_box_configs) if args.plane_box_configs else PLANE_BOX_CONFIGS
    precisions = args.fp32_precisions.split(",")
    box_conv_variants = [(config, precision) for precision in precisions for config in box_conv_configs]
    box_configs = parse_configs(args.box_configs) if args.box_configs else BOX_CONFIGS
    stages = {int(v) for v in args.stages.split(",")}
    dtypes = {name: DTYPES[name] for name in args.dtypes.split(",")}
    import triton
    import triton.testing

    def timed(fn):
        fn()
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")

    device = torch.device("cuda")
    torch.manual_seed(0)
    bandwidth = copy_bandwidth(device)
    header = ["stage", "H", "K", "taps", "dtype", "floor", "dense fwd"]
    header += [f"sat fwd t{t} w{w} c{c}" for t, w, c in sat_configs]
    header += [f"toeplitz {c[0]}x{c[1]}x{c[2]} w{c[3]} s{c[4]}" for c in configs] + ["toeplitz err vs sat"]
    header += [f"plane box w{c[0]} s{c[1]} rows<={c[2]}" + (f" regs<={c[3]}" if c[3:] and c[3] else "")
               + (" gather" if c[4:] and c[4] else "") for c in plane_box_configs] + ["plane box err (worst)"]
    header += [f"box fwd {m} rows w{w} s{st}" + (f" {p}" if len(precisions) > 1 else "")
               for (m, w, st), p in box_conv_variants]
    header += ["dense err", "box fwd err (worst)"]
    header += ["sat grad-w"] + [f"box grad-w k{k} w{w} s{s}" for k, w, s in box_configs]
    header += ["box err vs sat", "auto forms"]
    lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, batch "
             f"{args.batch}; ms, CUDA-graph medians; copy bandwidth {bandwidth / 1e12:.2f} TB/s", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    print("\n".join(lines), flush=True)
    for stage, channels, size, grid in (shape for shape in SHAPES if shape[0] in stages):
        grid = tuple(grid)
        cells = len(grid)
        for dtype_name, dtype in dtypes.items():
            x = torch.randn(args.batch, channels, size, size, device=device, dtype=dtype)
            w = (torch.randn(channels, 1, cells, cells, device=device) / sum(grid)).to(dtype)
            dy = torch.randn_like(x)
            reach = toeplitz.lag_reach(grid, size)

            def sat_fwd(config=sat_configs[0]):
                tile, warps, chunk = config
                return sat.peripheral_conv2d_taps(x, w, grid, lambda images, rows, cols, coeffs: (
                    triton_kernels.sat_taps_triton(images, rows, cols, coeffs, tile, warps, chunk)))

            def toeplitz_fwd(config):
                block_m, block_n, block_k, warps, stages = config
                return toeplitz.peripheral_conv2d_lags(x, w, grid, lambda images, kernel: (
                    triton_kernels.toeplitz_conv_triton(images, kernel, reach, block_m, block_n, block_k,
                                                        warps, stages)))

            def plane_box_fwd(config):
                warps, stages, row_cells, registers, gather = (tuple(config) + (0, 0))[:5]
                if gather:
                    return toeplitz.peripheral_conv2d_lags(x, w, grid, lambda planes, kernel: (
                        triton_kernels.plane_box_lags_triton(planes, kernel, grid, warps, stages, row_cells,
                                                             registers or None)))
                return toeplitz.peripheral_conv2d_box(x, w, grid, lambda planes, blocks, cells: (
                    triton_kernels.plane_box_conv_triton(planes, blocks, cells, warps, stages, row_cells,
                                                         registers or None)))

            def box_fwd(variant):
                (block_m, warps, stages), precision = variant
                if dtype != torch.float32 and precision != precisions[0]:
                    raise ValueError("only fp32 has a choice of dot precision")
                return toeplitz.peripheral_conv2d_box(x, w, grid, lambda images, blocks, cells: (
                    triton_kernels.box_conv_triton(images, blocks, cells, block_m, warps, stages,
                                                   precision if dtype == torch.float32 else None)))

            def box_grad(config):
                block_k, warps, stages = config
                return toeplitz.peripheral_grad_weight_boxes(dy, x, grid, lambda d, images, cells: (
                    triton_kernels.box_products_triton(d, images, cells, block_k=block_k, num_warps=warps,
                                                       num_stages=stages)))

            def sat_grad():
                return sat.peripheral_grad_weight_taps(dy, x, grid, triton_kernels.sat_tap_sums_triton)

            def timed_or_fail(fn):
                try:
                    return f"{timed(fn):.3f}"
                except Exception as error:  # a config that does not compile at this shape
                    return f"fail ({type(error).__name__})"

            row = [stage, size, sum(grid), sat_tap_count(grid, size, size), dtype_name,
                   f"{2 * x.numel() * x.element_size() / bandwidth * 1e3:.4f}",
                   f"{timed(lambda: dense(x, w, grid)):.3f}"]
            row += [timed_or_fail(lambda: sat_fwd(config)) for config in sat_configs]
            row += [timed_or_fail(lambda: toeplitz_fwd(config)) for config in configs]
            reference = sat_fwd().double()

            def worst_error(forward, candidates, target):
                """Largest relative error against ``target`` over the configs that run ('-' if none)."""
                errors = []
                for config in candidates:
                    try:
                        errors.append(relative_error(forward(config), target))
                    except Exception:  # reported as fail in its timing column
                        pass
                return f"{max(errors):.1e}" if errors else "-"

            row.append(f"{relative_error(toeplitz_fwd(configs[0]), reference):.1e}"
                       + (f" (sat configs: {worst_error(sat_fwd, sat_configs[1:], reference)})" if sat_configs[1:] else ""))
            exact = dense(x.double(), w.double(), grid)
            row += [timed_or_fail(lambda: plane_box_fwd(config)) for config in plane_box_configs]
            row.append(worst_error(plane_box_fwd, plane_box_configs, exact))
            row += [timed_or_fail(lambda: box_fwd(variant)) if dtype == torch.float32 or variant[1] == precisions[0]
                    else "-" for variant in box_conv_variants]
            row.append(f"{relative_error(dense(x, w, grid), exact):.1e}")
            row.append(worst_error(box_fwd, box_conv_variants, exact))
            row.append(f"{timed(sat_grad):.3f}")
            row += [timed_or_fail(lambda: box_grad(config)) for config in box_configs]
            row.append(f"{relative_error(box_grad(box_configs[0]), sat_grad().double()):.1e}")
            row.append("/".join(triton_forms(size, size, grid, dtype)))
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
