"""The public op and module: backend choice, errors, torch.library integration."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import runtime
from .pconv_cases import PAPER_GRIDS, assert_matches_reference, random_inputs
from runtime import BACKENDS, PeripheralConv2d, choose_backend, expand_kernel, peripheral_conv2d
from runtime.op import triton_forms
from runtime.reference import peripheral_conv2d_reference, pos_embed_term

GRID = (2, 1, 3, 1, 2)  # K = 9, asymmetric


def test_package_exports():
    assert set(runtime.__all__) >= {"expand_kernel", "peripheral_conv2d", "choose_backend",
                                    "PeripheralConv2d", "BACKENDS"}
    assert BACKENDS == ("auto", "torch", "sat", "triton")


@pytest.mark.parametrize("backend", ["torch", "sat", "auto"])
@pytest.mark.parametrize("mode", ["padded", "valid"])
def test_bias_and_pos_embed_are_added_by_every_backend(backend, mode):
    x, weight = random_inputs(2, 3, 6, 7, GRID, torch.float64, seed=0)
    bias, pos_embed = torch.randn(3, dtype=torch.float64), torch.randn(3, 9, 9, dtype=torch.float64)
    expected = (peripheral_conv2d_reference(x, weight, GRID) + bias.view(1, -1, 1, 1)
                + pos_embed_term(weight, GRID, pos_embed, mode, 6, 7))
    out = peripheral_conv2d(x, weight, GRID, bias, pos_embed, mode, backend=backend)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("mode", ["padded", "valid"])
def test_gradients_reach_weight_and_pos_embed_through_sat(mode):
    grid = (2, 1, 2)
    x, weight = random_inputs(1, 2, 3, 4, grid, torch.float64, seed=1)
    pos_embed = torch.randn(2, 5, 5, dtype=torch.float64, requires_grad=True)
    x.requires_grad_(), weight.requires_grad_()
    torch.autograd.gradcheck(
        lambda a, w, h: peripheral_conv2d(a, w, grid, pos_embed=h, pos_mode=mode, backend="sat"),
        (x, weight, pos_embed))


def test_auto_explains_its_choice():
    small = choose_backend("cpu", 14, 14, (1, 1, 1))
    large = choose_backend("cpu", 56, 56, PAPER_GRIDS[101])
    assert (small.name, large.name) == ("torch", "sat")
    assert "K²=9" in small.reason and "K²=10201" in large.reason
    assert choose_backend("meta", 14, 14, (3,)).name == "torch"


def test_auto_picks_triton_on_cuda_when_triton_imports():
    pytest.importorskip("triton")
    choice = choose_backend("cuda", 56, 56, PAPER_GRIDS[51])
    assert choice.name == "triton" and "triton" in choice.reason


def test_auto_on_cuda_follows_the_measured_layer_table():
    pytest.importorskip("triton")
    stage4 = choose_backend("cuda", 7, 7, PAPER_GRIDS[13])
    assert stage4.name == "triton" and "Toeplitz GEMM" in stage4.reason and "box-product GEMMs" in stage4.reason
    stage1_fp32 = choose_backend("cuda", 56, 56, PAPER_GRIDS[101])
    assert stage1_fp32.name == "triton" and "spectral box form" in stage1_fp32.reason
    stage2_fp32 = choose_backend("cuda", 28, 28, PAPER_GRIDS[69])
    assert stage2_fp32.name == "triton" and "spectral box form" in stage2_fp32.reason
    stage2_fp64 = choose_backend("cuda", 28, 28, PAPER_GRIDS[69], torch.float64)
    assert stage2_fp64.name == "triton" and "box-form GEMM" in stage2_fp64.reason
    stage1_bf16 = choose_backend("cuda", 56, 56, PAPER_GRIDS[101], torch.bfloat16)
    assert "plane-box GEMMs" in stage1_bf16.reason
    stage2_bf16 = choose_backend("cuda", 28, 28, PAPER_GRIDS[51], torch.bfloat16)
    assert "Toeplitz GEMM by image rows" in stage2_bf16.reason and "896 MACs per output" in stage2_bf16.reason


def test_compiling_the_cuda_choice_raises_no_dynamo_warning(monkeypatch):
    """torch.compile traces ``auto``'s choice, and Dynamo warns once per process about every
    functools.cache-wrapped call it meets there (the lazy triton import used to be one)."""
    pytest.importorskip("triton")
    import warnings
    from torch._dynamo import utils
    monkeypatch.setattr(utils, "warn_once_cache", set(), raising=False)  # forget earlier tests' warnings

    @torch.compile(fullgraph=True, backend="eager")
    def scaled(x):
        return x * (2 if choose_backend("cuda", 56, 56, PAPER_GRIDS[51]).name == "triton" else 3)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert scaled(torch.ones(2)).tolist() == [2.0, 2.0]
    assert [str(w.message) for w in caught if "Dynamo" in str(w.message)] == []


def test_triton_forms_follow_the_tap_ratios():
    # Narrow planes whose width pads little (14 -> 16, 28 -> 32) run the Toeplitz form by image rows;
    # 7 -> 16 would more than double its multiply-adds.
    assert triton_forms(7, 7, PAPER_GRIDS[13], torch.float32) == ("toeplitz", "box")
    assert triton_forms(14, 14, PAPER_GRIDS[51], torch.float32) == ("rowtoeplitz", "box")
    assert triton_forms(7, 7, PAPER_GRIDS[13], torch.bfloat16) == ("toeplitz", "box")
    # fp32 at stages 1-2: k'·Wp box multiply-adds beat H·W Toeplitz ones and the SAT taps; on planes
    # that pad to 32 or 64 the box form runs in its spectral version, on smaller ones as itself.
    assert triton_forms(28, 28, PAPER_GRIDS[51], torch.float32) == ("spectral", "box")
    assert triton_forms(16, 16, PAPER_GRIDS[13], torch.float32)[0] != "spectral"
    assert triton_forms(56, 56, PAPER_GRIDS[101], torch.float32) == ("spectral", "box")
    assert triton_forms(56, 56, PAPER_GRIDS[101], torch.float64) == ("box", "box")
    assert triton_forms(28, 28, PAPER_GRIDS[51], torch.bfloat16) == ("rowtoeplitz", "box")
    assert triton_forms(20, 20, PAPER_GRIDS[51], torch.bfloat16) == ("toeplitz", "box")  # 20 -> 32
    # 16-bit planes that fill a 64x64 tile: the plane box; smaller ones keep the Toeplitz form.
    assert triton_forms(56, 56, PAPER_GRIDS[101], torch.bfloat16) == ("plane", "box")
    assert triton_forms(56, 56, PAPER_GRIDS[51], torch.float16) == ("plane", "box")
    assert triton_forms(40, 40, PAPER_GRIDS[51], torch.bfloat16) == ("toeplitz", "box")
    assert triton_forms(56, 28, PAPER_GRIDS[51], torch.bfloat16) == ("rowtoeplitz", "box")
    # A tiny kernel on a big plane: 16 SAT taps against 3 x 64 box multiply-adds.
    assert triton_forms(56, 56, (1, 1, 1), torch.float32) == ("sat", "sat")
    # Planes beyond what a SAT program holds always take the Toeplitz form.
    assert triton_forms(96, 96, PAPER_GRIDS[101], torch.float32) == ("toeplitz", "box")


def test_explicit_backends_never_fall_back():
    x, weight = random_inputs(1, 2, 4, 4, GRID, torch.float32, seed=2)
    with pytest.raises(ValueError, match="backend must be one of"):
        peripheral_conv2d(x, weight, GRID, backend="cudnn")
    triton_kernels = pytest.importorskip("runtime.triton_kernels")
    if not triton_kernels.INTERPRETED:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            peripheral_conv2d(x, weight, GRID, backend="triton")


def test_bad_shapes_are_named():
    x, weight = random_inputs(1, 2, 4, 4, GRID, torch.float32, seed=3)
    with pytest.raises(ValueError, match=r"weight must be \(C, 1, k', k'\)"):
        peripheral_conv2d(x, weight[:, :, :4, :4], GRID)
    with pytest.raises(ValueError, match="odd"):
        peripheral_conv2d(x, weight, (2, 1, 3, 1, 3))
    with pytest.raises(ValueError, match="pos_embed must be"):
        peripheral_conv2d(x, weight, GRID, pos_embed=torch.zeros(2, 7, 7))
    with pytest.raises(ValueError, match="pos_mode"):
        peripheral_conv2d(x, weight, GRID, pos_mode="reflect")


def test_flops_count_the_equivalent_dense_conv():
    x, weight = random_inputs(2, 3, 5, 6, GRID, torch.float32, seed=4)
    x.requires_grad_(), weight.requires_grad_()
    dense = 2 * 2 * 3 * 5 * 6 * 9 * 9
    with FlopCounterMode(display=False) as forward:
        y = peripheral_conv2d(x, weight, GRID, backend="sat")
    assert forward.get_total_flops() == dense
    with FlopCounterMode(display=False) as backward:
        y.sum().backward()
    assert backward.get_total_flops() == 2 * dense  # grad-input and grad-weight
    with FlopCounterMode(display=False) as torch_path:
        peripheral_conv2d(x, weight, GRID, backend="torch")
    assert torch_path.get_total_flops() == dense


@pytest.mark.parametrize("backend", ["auto", "torch", "sat"])
def test_torch_compile_fullgraph_forward_and_backward(backend):
    module = PeripheralConv2d(3, GRID, bias=True, backend=backend)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    pos_embed = torch.randn(3, 9, 9)
    out = compiled(x, pos_embed, "valid")
    torch.testing.assert_close(out, module(x, pos_embed, "valid"))
    out.sum().backward()
    assert x.grad is not None and module.weight.grad is not None


@pytest.mark.skipif(not hasattr(torch.Tag, "needs_contiguous_strides")
                    or torch.Tag.needs_contiguous_strides not in torch.ops.pelk.peripheral_conv2d.default.tags,
                    reason="this torch has no needs_contiguous_strides tag for custom ops")
def test_inductor_hands_the_kernels_contiguous_inputs(monkeypatch):
    """A channels-last view in the compiled graph reaches the kernels as contiguous NCHW (inductor
    writes it from a fused kernel), forward and backward, so the op never copies it itself."""
    from runtime import op
    seen = []

    def recording(impl):
        def run(*args):
            seen.append([arg.is_contiguous() for arg in args if isinstance(arg, torch.Tensor)])
            return impl(*args)
        return run

    monkeypatch.setattr(op, "_conv_impl", recording(op._conv_impl))
    monkeypatch.setattr(op, "_grad_weight_impl", recording(op._grad_weight_impl))
    weight = torch.randn(4, 1, len(GRID), len(GRID), requires_grad=True)

    def mixer(x):
        x = x.contiguous(memory_format=torch.channels_last) * 2.0  # the graph holds x channels-last
        return peripheral_conv2d(x[:, :4], weight, GRID, backend="sat")

    x = torch.randn(2, 6, 7, 7, requires_grad=True)
    with torch._inductor.config.patch(force_disable_caches=True):  # a cached graph may predate the op's tags
        torch.compile(mixer)(x).square().sum().backward()
    assert len(seen) == 3  # forward, grad-input, grad-weight
    assert all(all(flags) for flags in seen), seen


def test_torch_export_keeps_one_op():
    module = PeripheralConv2d(3, GRID, backend="sat")
    program = torch.export.export(module, (torch.randn(2, 3, 6, 6),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets == ["pelk.peripheral_conv2d.default"]
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(program.module()(x), module(x))


def test_module_parameters_init_and_backend():
    module = PeripheralConv2d(4, PAPER_GRIDS[13], bias=True)
    assert module.weight.shape == (4, 1, 9, 9) and module.bias.shape == (4,)
    assert module.grid == tuple(PAPER_GRIDS[13]) and module.kernel_size == 13
    assert module.weight.abs().max() <= 1 / 13 and module.bias.abs().max() <= 1 / 13
    assert list(dict(module.named_buffers())) == []
    torch.testing.assert_close(module.expanded_weight(), expand_kernel(module.weight, module.grid))
    assert "grid=[2, 2, 1, 1, 1, 1, 1, 2, 2]" in repr(module) and "backend='auto'" in repr(module)
    module.set_backend("torch")
    assert module.backend == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        module.set_backend("fast")
    assert PeripheralConv2d(4, (3,)).bias is None


def test_module_backends_agree():
    module = PeripheralConv2d(3, PAPER_GRIDS[13])
    x = torch.randn(2, 3, 10, 10)
    outputs = []
    for backend in ("torch", "sat"):
        module.set_backend(backend)
        outputs.append(module(x))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_custom_ops_pass_opcheck():
    x, weight = random_inputs(2, 3, 5, 6, GRID, torch.float64, seed=5)
    x.requires_grad_(), weight.requires_grad_()
    torch.library.opcheck(torch.ops.pelk.peripheral_conv2d.default, (x, weight, list(GRID), "sat"))
    dy = torch.randn_like(x)
    torch.library.opcheck(torch.ops.pelk.peripheral_conv2d_grad_weight.default,
                          (dy, x.detach(), list(GRID), "sat"))


def test_autocast_runs_the_op_in_the_autocast_dtype_like_conv2d():
    x, weight = random_inputs(2, 3, 6, 7, GRID, torch.float32, seed=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = peripheral_conv2d(x, weight, GRID, backend="torch")  # F.conv2d, cast by autocast itself
        y = peripheral_conv2d(x, weight, GRID, backend="sat")
    assert dense.dtype == y.dtype == torch.bfloat16
    assert_matches_reference(y, x.to(torch.bfloat16), weight, GRID)


def test_device_constants_are_built_once_per_key_and_device():
    from runtime.constants import device_constant
    built = []

    def build():
        built.append(1)
        return torch.arange(3)

    first = device_constant(("test constant", 3), "cpu", build)
    assert device_constant(("test constant", 3), torch.device("cpu"), build) is first and built == [1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reduce_overhead_compile_trains_with_cuda_graphs(dtype):
    # First calls happen inside the CUDA-graph warm-up: cached index tensors must stay out of its pool.
    from runtime import constants
    constants._CONSTANTS.clear()
    module = PeripheralConv2d(4, PAPER_GRIDS[13], backend="auto").cuda()
    compiled = torch.compile(module, mode="reduce-overhead")
    x = torch.randn(2, 4, 7, 7, device="cuda", dtype=dtype)
    for _ in range(3):  # a training loop as bench_model runs it: fresh gradients every step
        module.zero_grad(set_to_none=True)
        torch.compiler.cudagraph_mark_step_begin()
        compiled(x).float().square().mean().backward()
    assert torch.isfinite(module.weight.grad).all()
    with torch.no_grad():
        torch.compiler.cudagraph_mark_step_begin()
        result = compiled(x).clone()
    tolerance = {} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(result, module(x).detach(), **tolerance)
