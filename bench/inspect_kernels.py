"""Compile the runtime's tensor-core kernels for an H100/H200 (sm_90) without a GPU and report how
Triton laid them out: shared memory, registers and spills (ptxas -v, the ptxas that ships with
triton), SASS instruction counts (its cuobjdump), asynchronous copies (and whether they bypass L1:
``cp.async.cg``; TMA copies count as async copies too), tensor-core dots and wgmma's waits.

A kernel whose loads are not copied asynchronously, or whose every wgmma waits for the one
before (``pendings`` all 0), runs its loop unpipelined; that is what plane sizes as runtime
values did to the Toeplitz and box kernels (docs/runtime.md). Run it before spending GPU time
on a kernel change; ``--ptx DIR`` also writes each kernel's PTX, to diff two versions.

    python3 bench/inspect_kernels.py
    python3 bench/inspect_kernels.py --stages 1 --ptx /tmp/ptx

Run it with the triton the GPU machine has (3.6 there): codegen differs between versions.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.bench_layers import SHAPES  # noqa: E402
from runtime import spectral, triton_kernels  # noqa: E402
from runtime.toeplitz import HALF_SCALE_BITS, padded_width  # noqa: E402

H100 = GPUTarget("cuda", 90, 32)
TORCH_TYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # --dtypes names, also triton's
POINTER_ALIGNMENT = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned


def compile_kernel(kernel, pointers: dict[str, str], scalars: tuple[str, ...], constants: dict,
                   num_warps: int, num_stages: int, max_registers: int | None = None):
    """(compiled kernel, TTGIR) for ``kernel`` with pointer args typed by ``pointers`` (name -> '*fp32'),
    int32 ``scalars`` and compile-time ``constants``, in the kernel's argument order; ``max_registers``
    as the launcher's ptxas cap."""
    names = list(kernel.arg_names)
    signature = {name: pointers.get(name) or ("i32" if name in scalars else "constexpr") for name in names}
    attrs = {(names.index(name),): POINTER_ALIGNMENT for name in pointers}
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if max_registers:
        options["maxnreg"] = max_registers
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs),
                              target=H100, options=options)
    return compiled, compiled.asm["ttgir"]


def _nvidia_tool(name: str) -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


def assemble(ptx: str) -> tuple[str, str]:
    """(ptxas -v report, SASS listing) of ``ptx`` for sm_90a with the ptxas and cuobjdump that ship
    with triton; ('', '') where it ships none."""
    ptxas, cuobjdump = _nvidia_tool("ptxas"), _nvidia_tool("cuobjdump")
    if not ptxas:
        return "", ""
    with tempfile.TemporaryDirectory() as folder:
        source, cubin = os.path.join(folder, "kernel.ptx"), os.path.join(folder, "kernel.cubin")
        with open(source, "w") as handle:
            handle.write(ptx)
        report = subprocess.run([ptxas, "-arch=sm_90a", "-v", source, "-o", cubin], capture_output=True,
                                text=True).stderr
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout if cuobjdump else ""
    return report, sass


def registers(report: str) -> str:
    """'registers / spill bytes' from a ptxas -v report, or '?'."""
    used, spilled = re.search(r"Used (\d+) registers", report), re.search(r"(\d+) bytes spill stores", report)
    return f"{used.group(1) if used else '?'} / {spilled.group(1) if spilled else '?'}"


def sass_counts(sass: str) -> str:
    """'instructions / in loops': the kernel's SASS instructions, and those inside backward branches
    (loop bodies, each counted once), as '?' where no SASS could be made. A static count: multiply a
    loop's body by its trip count for the instructions a program issues."""
    instructions = [(int(address, 16), text) for address, text in
                    re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    if not instructions:
        return "?"
    in_loops = set()
    for address, text in instructions:
        target = re.search(r"BRA\b.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:
            in_loops.update(a for a, _ in instructions if int(target.group(1), 16) <= a <= address)
    return f"{len(instructions)} / {len(in_loops)}"


def layout_row(label: str, compiled, ttgir: str) -> str:
    pendings = re.findall(r"pendings = (\d+)", ttgir)
    ptx = compiled.asm["ptx"]
    report, sass = assemble(ptx)
    return (f"| {label} | {compiled.metadata.shared} | {registers(report)} | {sass_counts(sass)} | "
            f"{len(re.findall(r'async(?:_tma)?_copy_global_to_local', ttgir))} | "
            f"{ptx.count('cp.async.cg')} / {ptx.count('cp.async.ca')} | "
            f"{ttgir.count('tt.dot ')} | {ttgir.count('warp_group_dot ')} | {','.join(pendings) or '-'} |")


def kernels_at(size: int, grid: tuple[int, ...], dtype: str, box_tiles: list[tuple[int, int, int]] | None = None):
    """(label, kernel, pointers, scalars, constants, warps, stages, register cap) at the launchers' defaults;
    the box conv also at each (rows, warps, stages) of ``box_tiles``."""
    half = dtype != "fp32"
    precision = "tf32" if half else "tf32x3"
    block_m, block_n, block_k, stages = triton_kernels.toeplitz_tile(TORCH_TYPES[dtype], size, size)
    yield ("toeplitz", triton_kernels._toeplitz_kernel,
           {"x_ptr": f"*{dtype}", "kc_ptr": f"*{dtype}", "y_ptr": f"*{dtype}"},
           ("B", "C", "LAG_LO", "LAG_HI"),
           {"H": size, "W": size, "PRECISION": precision, "UPCAST": False, "BLOCK_M": block_m, "BLOCK_N": block_n,
            "BLOCK_K": block_k},
           4, stages, None)
    default_tile = triton_kernels.box_conv_tile(TORCH_TYPES[dtype], padded_width(size))
    for block_m, warps, stages in [default_tile] + (box_tiles or []):
        tile = "" if (block_m, warps, stages) == default_tile else f" {block_m}/{warps}/{stages}"
        yield ("box conv" + tile, triton_kernels._box_conv_kernel,
               {"x_ptr": f"*{dtype}", "prefix_ptr": "*fp32", "blocks_ptr": f"*{dtype}", "lo_ptr": "*i32",
                "hi_ptr": "*i32", "narrow_ptr": "*i32", "wide_ptr": "*i32", "y_ptr": f"*{dtype}"},
               ("B", "C", "CELLS", "CELL_BEGIN", "CELL_END", "NARROW", "WIDE"),
               {"H": size, "W": size, "PRECISION": precision, "UPCAST": False, "HI_LO": half,
                "BLOCK_M": block_m, "W_PAD": padded_width(size)},
               warps, stages, None)
    half_boxes = triton_kernels.half_boxes_apply(TORCH_TYPES[dtype])
    plane_constants = {"PRECISION": precision, "UPCAST": False, "HI_LO": half, "HALF_BOXES": half_boxes,
                       "SCALE_BITS": HALF_SCALE_BITS, "H_PAD": padded_width(size), "W_PAD": padded_width(size)}
    plane_scalars = ("C", "CELLS", "ROW_LAGS", "WIDE_CELLS", "BOX_BITS", "WIDE_PAIRS")  # CENTRE: 1, specialised
    wide_blocks = "fp16" if half_boxes else dtype  # R's fp16 copy, or R itself
    yield ("plane box", triton_kernels._plane_box_kernel,
           {"x_ptr": f"*{dtype}", "blocks_ptr": f"*{dtype}", "wide_blocks_ptr": f"*{wide_blocks}", "exponents_ptr": "*i32",
            "bands_ptr": f"*{dtype}", "row_lags_ptr": "*i32", "wide_ptr": "*i32", "y_ptr": f"*{dtype}"},
           plane_scalars, {"H": size, "W": size, **plane_constants}, 4, 1, None)
    if triton_kernels.tma_rows_align(size, TORCH_TYPES[dtype]):
        tile = f"{padded_width(size)},{padded_width(size)}"
        yield ("plane box tma", triton_kernels._plane_box_tma_kernel,
               {"x_desc": f"tensordesc<{dtype}[1,{tile}]>", "blocks_desc": f"tensordesc<{dtype}[{tile}]>",
                "wide_blocks_desc": f"tensordesc<{wide_blocks}[{tile}]>", "exponents_ptr": "*i32",
                "bands_desc": f"tensordesc<{dtype}[{tile}]>", "y_desc": f"tensordesc<{dtype}[1,{tile}]>",
                "row_lags_ptr": "*i32", "wide_ptr": "*i32"},
               plane_scalars, {**plane_constants, "PLANES": 2, "CENTRE": 1}, 4, 2, None)
    if size <= 32:
        tile = triton_kernels.row_toeplitz_tile(TORCH_TYPES[dtype], size)
        yield ("row toeplitz", triton_kernels._row_toeplitz_kernel,
               {"x_ptr": f"*{dtype}", "blocks_ptr": f"*{dtype}", "cells_ptr": "*i32", "y_ptr": f"*{dtype}"},
               ("B", "C", "CELLS", "LAG_LO", "LAG_HI"),
               {"H": size, "W": size, "PRECISION": precision, "UPCAST": False, "BLOCK_M": tile.block_m,
                "ROWS": tile.rows, "W_PAD": padded_width(size)},
               tile.num_warps, tile.num_stages, tile.max_registers)
    if not half and size > 16:
        for planes, frequency_block in ((1, None), (2, None), (1, 0), (2, 0)):
            frequency_block = frequency_block if frequency_block is not None else (
                triton_kernels.spectral_frequency_block(grid, size))
            frequency_block = frequency_block or spectral.padded_frequencies(grid, size)
            yield (f"spectral box, {planes} plane(s), {frequency_block} frequencies a pass",
                   triton_kernels._spectral_box_kernel,
                   {"x_ptr": "*fp32", "spectra_ptr": "*fp32", "offsets_ptr": "*i32", "forward_ptr": "*fp32",
                    "inverse_ptr": "*fp32", "scratch_ptr": "*fp32", "y_ptr": "*fp32"},
                   ("B", "C", "BOUNDARIES"),
                   {"H": size, "W": size, "PRECISION": precision, "H_PAD": padded_width(size),
                    "W_PAD": padded_width(size), "F_PAD": spectral.padded_frequencies(grid, size),
                    "F_USED": spectral.stored_frequencies(grid, size), "F_BLOCK": frequency_block,
                    "PLANES": planes, "DISCARD_SCRATCH": True},
                   4, 1, triton_kernels.spectral_register_cap(size))
    yield ("box products", triton_kernels._box_products_kernel,
           {"dy_ptr": f"*{dtype}", "prefix_ptr": "*fp32", "lo_ptr": "*i32", "hi_ptr": "*i32", "out_ptr": "*fp32"},
           ("B", "C", "CELLS", "PER_SPLIT"),
           {"H": size, "W": size, "PRECISION": precision, "UPCAST": False, "HI_LO": half,
            "BLOCK_W": max(16, min(64, triton.next_power_of_2(size))), "BLOCK_K": 32},
           4, 1, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="1,2,3,4", help="comma-separated stages of bench_layers.SHAPES")
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--ptx", help="write each kernel's PTX into this directory")
    parser.add_argument("--box-tiles", help="also compile the box conv at these rows/warps/stages, e.g. 64/4/2,128/8/2")
    args = parser.parse_args()
    box_tiles = [tuple(int(v) for v in tile.split("/")) for tile in args.box_tiles.split(",")] if args.box_tiles else []
    stages = {int(v) for v in args.stages.split(",")}
    shapes = {(stage, size): tuple(grid) for stage, _, size, grid in SHAPES if stage in stages}
    print(f"triton {triton.__version__}, target sm_90, the launchers' default tiles\n")
    print("| stage, H, dtype, kernel | shared bytes | registers / spill bytes | SASS instructions / in loops | "
          "async copies | cp.async L2 only / via L1 | mma (sm_80 style) | wgmma | wgmma waits (pendings) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (stage, size), grid in shapes.items():
        for dtype in args.dtypes.split(","):
            for label, kernel, pointers, scalars, constants, warps, num_stages, cap in kernels_at(size, grid, dtype, box_tiles):
                compiled, ttgir = compile_kernel(kernel, pointers, scalars, constants, warps, num_stages, cap)
                print(layout_row(f"{stage}, {size}, {dtype}, {label}", compiled, ttgir), flush=True)
                if args.ptx:
                    os.makedirs(args.ptx, exist_ok=True)
                    name = f"stage{stage}-{dtype}-{re.sub('[^A-Za-z0-9]+', '-', label)}.ptx"
                    with open(os.path.join(args.ptx, name), "w") as handle:
                        handle.write(compiled.asm["ptx"])


if __name__ == "__main__":
    main()
