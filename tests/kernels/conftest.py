"""Kernel tests run the Triton kernels for real on CUDA, and under the Triton
interpreter on CPU. The interpreter has to be switched on before any kernel is
decorated, so this runs before the test modules import bytelm's triton files.
`import torch` does not import triton, so checking for CUDA first is safe.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
