"""The compiler: spec -> graph IR (networkx) -> analysis passes -> nn.Module.

The only package that joins `archspec` (specs, no torch) and `runtime` (ops, no specs).
"""

from compiler.build import (BuildError, CompiledSpec, build_model, compile_spec, load_model, load_weights,
                            resolve_model, save_weights, write_build)
from compiler.network import LargeKernelNet

__all__ = ["BuildError", "CompiledSpec", "LargeKernelNet", "build_model", "compile_spec", "load_model",
           "load_weights", "resolve_model", "save_weights", "write_build"]
