"""ONNX export of a compiled model, checked against PyTorch in onnxruntime (CPU).

Exporters know plain depthwise convolutions, not pelk's peripheral-conv
operator, so the exported graph is that of an exact re-expression of the
model, made on a copy (the model passed in is never changed):

* a training-form model is put in deploy form with ``expand=True``
  (`compiler.deploy`: BNs, small kernels and the positional embedding folded,
  every mixer one K x K depthwise ``nn.Conv2d``);
* a deploy-form model whose peripheral convs were kept has each of them
  replaced by the ``nn.Conv2d`` holding its expanded kernel (same weights,
  same bias: the expansion is exact, no approximation).

The export uses the TorchScript-based exporter (``dynamo=False``: no
onnxscript needed), a dynamic batch axis, input ``image`` (B, C, R, R) and
output ``logits`` (B, classes) or ``features`` (B, C_last) without a
classifier; the file is written atomically and checked with onnx's checker.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
from torch import nn

import runtime
from archspec.files import atomic_write_bytes
from compiler.build import BuildError
from compiler.network import LargeKernelNet

DEFAULT_OPSET = 17


class ExportError(BuildError):
    """The model cannot be exported, or the exported file disagrees with PyTorch; the message says how."""


def _expand_peripheral_convs(module: nn.Module) -> None:
    """Replace every runtime.PeripheralConv2d below ``module`` by its exact dense depthwise nn.Conv2d."""
    from compiler.deploy import depthwise_conv
    for name, child in module.named_children():
        if isinstance(child, runtime.PeripheralConv2d):
            weight = child.expanded_weight().detach()
            bias = child.bias.detach() if child.bias is not None else weight.new_zeros(weight.shape[0])
            with torch.no_grad():
                setattr(module, name, depthwise_conv(weight, bias))
        else:
            _expand_peripheral_convs(child)


def exportable_copy(model: LargeKernelNet) -> LargeKernelNet:
    """An eval-mode copy of ``model`` made of standard modules only (see the module docstring)."""
    exportable = copy.deepcopy(model).eval()
    if getattr(exportable, "deploy_form", None) is None:
        exportable.deploy(expand=True)
    _expand_peripheral_convs(exportable)
    return exportable


def export_onnx(model: LargeKernelNet, path: str | Path, resolution: int | None = None,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` as ONNX to ``path`` (atomically) for (B, C, R, R) inputs; R defaults to the spec's."""
    import onnx
    resolution = resolution or model.spec.input.resolution
    if resolution < model.feature_info[-1]["reduction"]:
        raise ExportError(f"resolution {resolution} is smaller than the model's total stride "
                          f"{model.feature_info[-1]['reduction']}")
    exportable = exportable_copy(model)
    image = torch.zeros(1, model.in_channels, resolution, resolution)
    output = "logits" if model.num_classes else "features"
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracing notes: the result is
        warnings.simplefilter("ignore", DeprecationWarning)  # checked numerically (verify_onnx) instead
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(exportable, (image,), buffer, dynamo=False, opset_version=opset,
                              input_names=["image"], output_names=[output],
                              dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}})
        except Exception as error:  # the exporter raises many types; name the model and the opset
            raise ExportError(f"{model.spec.name}: ONNX export (opset {opset}) failed: "
                              f"{type(error).__name__}: {str(error).splitlines()[0]}") from None
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    return atomic_write_bytes(path, buffer.getvalue())


@torch.no_grad()
def verify_onnx(model: LargeKernelNet, path: str | Path, batch: int = 2, resolution: int | None = None,
                seed: int = 0) -> dict:
    """Run the ONNX file in onnxruntime (CPU) and ``model`` in PyTorch on one random batch; compare.

    ``ok`` when max |onnx - torch| <= 1e-4 * (1 + max |torch|) (fp32, different summation orders).
    The model runs in eval mode and is left in the mode it was in.
    """
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [image_input] = session.get_inputs()
    resolution = resolution or image_input.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, model.in_channels, resolution, resolution, generator=generator)
    was_training = model.training
    expected = model.eval()(image).float()
    model.train(was_training)
    [got] = session.run(None, {image_input.name: image.numpy()})
    difference = (torch.from_numpy(got) - expected).abs().max().item()
    scale = expected.abs().max().item()
    tolerance = 1e-4 * (1.0 + scale)
    return {"input": list(image.shape), "max_abs_diff": difference, "max_abs_output": scale,
            "tolerance": tolerance, "ok": difference <= tolerance}


__all__ = ["DEFAULT_OPSET", "ExportError", "export_onnx", "exportable_copy", "verify_onnx"]
