"""Every Triton kernel compiles to a real GPU binary (sm_90 cubin), without a GPU.

The interpreter runs kernels as NumPy and accepts code the compiler rejects
(type mismatches in loop-carried values, unsupported ops), so CPU-only
machines also compile each kernel ahead of time with triton's bundled ptxas.
It runs in a subprocess because the interpreter, switched on for this test
session, replaces triton's own library functions.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from bytelm.kernels.pooling import triton as pooling
from bytelm.kernels.verify import triton as verify

INT64 = {"offsets_ptr", "lengths_ptr", "index_ptr", "key_ptr", "drafts_ptr", "accepted_ptr", "next_ptr"}
FP32 = {"q_ptr", "u_accept_ptr", "u_sample_ptr"}


def signature(fn, dtype, constexprs):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*i64" if name in INT64 else "*i32" if name == "argmax_ptr" else "*fp32" if name in FP32 else f"*{dtype}"
        else:
            sig[name] = "fp32" if name == "temperature" else "i32"
    return sig


def compile(fn, dtype, **constexprs):
    src = ASTSource(fn=fn, signature=signature(fn, dtype, constexprs), constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert len(kernel.asm["cubin"]) > 0


tiles = dict(BLOCK_T=pooling.BLOCK_T, BLOCK_D=pooling.MAX_BLOCK_D)
for dtype in ("fp32", "bf16"):
    for mode in pooling.MODE_IDS.values():
        compile(pooling._pool_fwd_kernel, dtype, MODE=mode, **tiles)
        compile(pooling._pool_bwd_kernel, dtype, MODE=mode, **tiles)
    compile(pooling._unpool_fwd_kernel, dtype, **tiles)
    compile(pooling._unpool_bwd_kernel, dtype, **tiles)
    for greedy in (True, False):
        compile(verify._verify_fwd_kernel, dtype, GREEDY=greedy, EPS=1e-6, BLOCK_V=512)
print("compiled")
"""


def test_kernels_compile_for_sm90():
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends/nvidia/bin/ptxas").exists():
        pytest.skip("triton has no bundled ptxas")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-3000:]
