"""Per-layer benchmark of the peripheral-conv backends against the dense baseline.

For every PeLK-T large-kernel layer shape (perf-baseline.md) and dtype it
times, side by side in one run with ``triton.testing.do_bench`` medians:
dense (expand + F.conv2d) fwd and fwd+bwd, each runtime backend fwd and
fwd+bwd, the HBM floor (x read once + y written once over the copy bandwidth
measured in the same run), the ratio to that floor and the speedup over dense.
Before timing it checks every backend against a float64 reference on a small
batch. Prints markdown and writes it to ``--out``.

    python3 bench/bench_layers.py --out layers.md              # GPU
    python3 bench/bench_layers.py --cpu-crossover               # CPU: sat vs torch
    python3 bench/bench_layers.py --bounds                      # no GPU: arithmetic lower bounds
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from runtime import expand_kernel, peripheral_conv2d  # noqa: E402
from runtime.op import sat_tap_count  # noqa: E402
from runtime.sat import clamped_offsets  # noqa: E402
from runtime.spectral import padded_frequencies  # noqa: E402
from runtime.toeplitz import cell_lag_ranges, cells_within_reach, padded_width  # noqa: E402


def mirror(outer: list[int]) -> list[int]:
    """Full grid from the cells outside the centre, outermost first."""
    return outer + [1] + outer[::-1]


# (stage, channels, size, grid): PeLK-T partial channels (3/8 of 1.3x ConvNeXt-T widths), 224² input;
# greedy grids as archspec.grid.full_grid(K, centre) gives them (5x5 centre; 7x7 for K=101/69/67).
SHAPES = [
    (1, 46, 56, mirror([9, 8, 4, 2, 1, 1])),             # K=51
    (1, 46, 56, mirror([17, 16, 8, 4, 2, 1, 1, 1])),     # K=101
    (2, 93, 28, mirror([8, 8, 4, 2, 1, 1])),             # K=49
    (2, 93, 28, mirror([1, 16, 8, 4, 2, 1, 1, 1])),      # K=69
    (3, 187, 14, mirror([7, 8, 4, 2, 1, 1])),            # K=47
    (3, 187, 14, mirror([16, 8, 4, 2, 1, 1, 1])),        # K=67
    (4, 374, 7, mirror([2, 2, 1, 1])),                   # K=13
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def dense(x, weight, grid):
    return F.conv2d(x, expand_kernel(weight, grid).to(x.dtype), padding=sum(grid) // 2, groups=x.shape[1])


def relative_error(value: torch.Tensor, ref: torch.Tensor) -> float:
    return ((value.double() - ref).norm() / ref.norm()).item()


def check(backends, device, batch=4) -> list[str]:
    """Relative error of y, dx, dw against a float64 reference, every shape, backend and dtype."""
    lines = ["| stage | K | dtype | backend | y err | dx err | dw err | torch y err |", "|" + "---|" * 8]
    for stage, channels, size, grid in SHAPES:
        cells = len(grid)
        x64 = torch.randn(batch, channels, size, size, device=device, dtype=torch.float64)
        w64 = torch.randn(channels, 1, cells, cells, device=device, dtype=torch.float64) / sum(grid)
        dy64 = torch.randn_like(x64)
        for dtype_name, dtype in DTYPES.items():
            x, w, dy = (t.to(dtype) for t in (x64, w64, dy64))
            xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
            ref = dense(xr, wr, grid)
            ref.backward(dy.double())
            torch_err = relative_error(dense(x, w, grid), ref.detach())
            for backend in backends:
                xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
                y = peripheral_conv2d(xb, wb, grid, backend=backend)
                y.backward(dy)
                errors = [relative_error(y, ref.detach()), relative_error(xb.grad, xr.grad),
                          relative_error(wb.grad, wr.grad)]
                bad = any(not e < 3e-2 for e in errors)
                lines.append(f"| {stage} | {sum(grid)} | {dtype_name} | {backend} | "
                             + " | ".join(f"{e:.1e}" for e in errors) + f" | {torch_err:.1e} |"
                             + (" **FAIL**" if bad else ""))
    return lines


def hbm_floor(elements: int, itemsize: int, bandwidth: float) -> float:
    """Seconds to read x of ``elements`` entries once and write y once at ``bandwidth`` bytes/s."""
    return 2 * elements * itemsize / bandwidth


def forward_target(floor: float) -> float:
    """Issue 4's forward target in seconds: 10x the HBM floor or 20 µs, whichever is larger."""
    return max(10 * floor, 20e-6)


def copy_bandwidth(device) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    import triton.testing
    src = torch.randn(2**28, device=device)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def bench(backends, device, batch, bandwidth, cudagraph=False) -> list[str]:
    import triton.testing

    def timed(fn):
        if cudagraph:  # GPU time alone: one CUDA-graph replay per call, no host cost
            fn()
            return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
        return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")

    header = ["stage", "C", "H=W", "K", "k'", "taps", "dtype", "dense fwd", "dense fwd+bwd"]
    for backend in backends:
        header += [f"{backend} fwd", f"{backend} fwd+bwd"]
    header += ["HBM floor fwd", "best fwd / floor", "fwd target", "met", "fwd speedup", "fwd+bwd speedup"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stage, channels, size, grid in SHAPES:
        cells = len(grid)
        for dtype_name, dtype in DTYPES.items():
            x = torch.randn(batch, channels, size, size, device=device, dtype=dtype, requires_grad=True)
            w = (torch.randn(channels, 1, cells, cells, device=device) / sum(grid)).to(dtype).requires_grad_()
            dy = torch.randn_like(x)

            def fwd_bwd(fn):
                def run():
                    fn().backward(dy)
                return run

            with torch.no_grad():
                dense_fwd = timed(lambda: dense(x, w, grid))
            dense_fb = timed(fwd_bwd(lambda: dense(x, w, grid)))
            times = []
            for backend in backends:
                with torch.no_grad():
                    times.append(timed(lambda: peripheral_conv2d(x, w, grid, backend=backend)))
                times.append(timed(fwd_bwd(lambda: peripheral_conv2d(x, w, grid, backend=backend))))
            floor = hbm_floor(x.numel(), x.element_size(), bandwidth) * 1e3
            target = forward_target(floor / 1e3) * 1e3
            best_fwd, best_fb = min(times[0::2]), min(times[1::2])
            row = [stage, channels, size, sum(grid), cells, sat_tap_count(grid, size, size), dtype_name,
                   f"{dense_fwd:.3f}", f"{dense_fb:.2f}"] + [f"{t:.3f}" for t in times]
            row += [f"{floor:.4f}", f"{best_fwd / floor:.1f}x", f"{target:.3f}", "yes" if best_fwd <= target else "no",
                    f"{dense_fwd / best_fwd:.1f}x",
                    f"{dense_fb / best_fb:.1f}x"]
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
            print(lines[-1], flush=True)
    return lines


def cpu_crossover(batch=2, repeats=5) -> list[str]:
    """CPU forward times of torch vs sat; op.CPU_SAT_MIN_TAP_RATIO is read off this table."""
    lines = ["| C | H | K | K² / SAT taps | torch fwd ms | sat fwd ms |", "|" + "---|" * 6]
    cases = [(46, 56, [9, 8, 4, 2, 1, 1]), (46, 56, [4, 2, 1, 1]), (46, 56, [2, 1, 1]),
             (93, 28, [8, 8, 4, 2, 1, 1]), (93, 28, [4, 4, 2, 1, 1]), (93, 28, [2, 2, 1, 1]),
             (187, 14, [16, 8, 4, 2, 1, 1, 1]), (187, 14, [4, 2, 1, 1]), (374, 7, [2, 2, 1, 1])]
    for channels, size, outer in cases:
        grid = mirror(outer)
        x = torch.randn(batch, channels, size, size)
        w = torch.randn(channels, 1, len(grid), len(grid))
        result = []
        for backend in ("torch", "sat"):
            peripheral_conv2d(x, w, grid, backend=backend)
            start = time.perf_counter()
            for _ in range(repeats):
                peripheral_conv2d(x, w, grid, backend=backend)
            result.append((time.perf_counter() - start) / repeats * 1e3)
        ratio = sum(grid) ** 2 / sat_tap_count(grid, size, size)
        lines.append(f"| {channels} | {size} | {sum(grid)} | {ratio:.1f} | {result[0]:.1f} | {result[1]:.1f} |")
        print(lines[-1], flush=True)
    return lines

# Dense tensor-core and FP32 peaks of the H100 SXM / H200 (the same GH100 compute; NVIDIA's datasheets),
# multiply-adds per second, and the H200's copy bandwidth as bench_layers measured it on 2026-12-04.
PEAK_MACS = {"bf16": 989.4e12 / 2, "tf32": 494.7e12 / 2, "fp32 fma": 66.9e12 / 2}
H200_COPY_BANDWIDTH = 4.25e12


def forward_forms(grid: list[int], size: int, dtype_name: str) -> list[tuple[str, float, str]]:
    """(form, multiply-adds per output, peak they run at) of the forward forms that can reach the
    target at this shape: fp32 as the box form (k'·Wp per output for the cells within reach, times
    three TF32 products, or one with TF32 opted in), the spectral box form on planes padded to 64 (its
    four DFT products, Hp·Wp·Fp each a plane, times three TF32 products; its complex products, 4 per
    merged boundary and padded frequency, on FP32 FMAs) and the SAT taps on FP32 FMAs; bf16 on planes
    padded to 64 as the plane box (one 64x64x64 product per one-row lag, two per wider cell)."""
    ranges = [cell_lag_ranges(tuple(grid))[cell] for cell in cells_within_reach(tuple(grid), size)]
    padded = padded_width(size)
    box = len(ranges) * padded
    if dtype_name == "fp32":
        forms = [("box, 3 TF32 products", 3 * box, "tf32"), ("box, 1 TF32 product (opt-in)", box, "tf32")]
        if padded == 64:
            frequencies = padded_frequencies(tuple(grid), size)
            boundaries = len(clamped_offsets(grid, size))
            forms += [("spectral, DFT as 3 TF32 products", 3 * 4 * padded * padded * frequencies / size ** 2, "tf32"),
                      ("spectral, complex products", 4 * boundaries * padded * frequencies / size ** 2, "fp32 fma")]
        return forms + [("SAT taps", sat_tap_count(grid, size, size), "fp32 fma")]
    if padded != 64:
        return []
    products = sum(hi - lo == 1 for lo, hi in ranges) + 2 * sum(hi - lo > 1 for lo, hi in ranges)
    return [("plane box", products * padded ** 3 / size ** 2, "bf16")]


def arithmetic_bounds(batch: int = 64, bandwidth: float = H200_COPY_BANDWIDTH) -> list[str]:
    """Per layer, dtype and form: issue 4's target, the form's multiply-adds at the GPU's peak rate, and
    the share of that peak a kernel must sustain to meet the target. No GPU needed."""
    lines = [f"Batch {batch}, copy bandwidth {bandwidth / 1e12:.2f} TB/s; peaks (multiply-adds/s): "
             + ", ".join(f"{name} {rate / 1e12:.0f}T" for name, rate in PEAK_MACS.items()), "",
             "| stage | K | dtype | target µs | form | multiply-adds / output | µs at peak | share of peak needed |",
             "|" + "---|" * 8]
    for stage, channels, size, grid in SHAPES:
        outputs = batch * channels * size * size
        for dtype_name, dtype in DTYPES.items():
            target = forward_target(hbm_floor(outputs, dtype.itemsize, bandwidth))
            for form, macs, peak in forward_forms(grid, size, dtype_name):
                at_peak = outputs * macs / PEAK_MACS[peak]
                lines.append(f"| {stage} | {sum(grid)} | {dtype_name} | {target * 1e6:.0f} | {form} | {macs:.0f} | "
                             f"{at_peak * 1e6:.0f} | {at_peak / target:.0%} |")
    return lines


def add_float32_precision_argument(parser: argparse.ArgumentParser) -> None:
    """--float32-matmul-precision, for torch.set_float32_matmul_precision: 'high' lets the fp32 kernels take one
    TF32 product instead of three."""
    parser.add_argument("--float32-matmul-precision", default="highest", choices=["highest", "high"],
                        help="torch.set_float32_matmul_precision: 'high' lets the fp32 kernels take one TF32 product")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the markdown here")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backends", default="triton,sat", help="comma-separated runtime backends")
    parser.add_argument("--cpu-crossover", action="store_true", help="time torch vs sat on the CPU")
    parser.add_argument("--bounds", action="store_true",
                        help="no GPU: each forward form's multiply-adds at peak against the target")
    parser.add_argument("--cudagraph", action="store_true",
                        help="time CUDA-graph replays (GPU time without host overhead) instead of eager calls")
    add_float32_precision_argument(parser)
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.float32_matmul_precision)
    if args.bounds:
        lines = arithmetic_bounds(args.batch)
    elif args.cpu_crossover:
        lines = [f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}", ""] + cpu_crossover()
    else:
        import triton
        device = torch.device("cuda")
        backends = args.backends.split(",")
        torch.manual_seed(0)
        timing = "do_bench_cudagraph medians, GPU time" if args.cudagraph else "do_bench medians, eager"
        lines = [f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}, "
                 f"batch {args.batch}; times in ms ({timing}); float32 matmul precision "
                 f"{args.float32_matmul_precision}", ""]
        lines += ["Accuracy against a float64 reference (batch 4):", ""] + check(backends, device) + [""]
        print("\n".join(lines), flush=True)
        bandwidth = copy_bandwidth(device)
        lines += [f"Copy bandwidth (read + write): {bandwidth / 1e12:.2f} TB/s", ""]
        lines += bench(backends, device, args.batch, bandwidth, args.cudagraph)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)


if __name__ == "__main__":
    main()
