"""Peripheral-conv runtime: torch reference, SAT form, Triton kernels, custom op, module.

Imports with torch alone (triton optional); knows nothing of specs.
"""
from runtime.modules import PeripheralConv2d
from runtime.op import BACKENDS, BackendChoice, choose_backend, peripheral_conv2d
from runtime.reference import expand_kernel

__all__ = ["BACKENDS", "BackendChoice", "PeripheralConv2d", "choose_backend", "expand_kernel",
           "peripheral_conv2d"]
