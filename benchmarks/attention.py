"""Attention backends on the masks ByteLM uses, as a ratio to the sdpa reference.

    python -m benchmarks.attention            # CUDA: bf16, forward and forward+backward
    python -m benchmarks.attention --quick    # small shapes; on CPU forward only (sdpa, flex)

Masks, built like the model builds them (`MaskSpec`, see bytelm/model/bytelm.py):

- `local`: encoder/decoder self-attention over bytes: documents, causal,
  sliding window;
- `latent`: self-attention over patches: documents, causal;
- `pool`: cross-attention pooling: each patch query reads its own bytes;
  rows have empty patch slots (key-less queries) and PAD bytes.

Every backend is first checked against sdpa on the benchmark inputs (the
max abs difference is reported), then timed: median over --reps runs after
warm-up, CUDA events on GPU. flex and the xformers plan build their masks
once per spec, like a stack's layers do, so timings exclude that; the
`mask` column gives that one-off cost. Results go to
benchmarks/results/attention-<device>.{csv,md} with the machine.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

from benchmarks.common import median_ms, write_results
from bytelm.kernels.attention import MaskSpec, _memo, attention, xformers_available
from bytelm.patchers import lengths_to_ids


def specs(B: int, T: int, doc_len: int, patch_len: int, window: int, device):
    """The three masks of a ByteLM forward on B rows of T bytes."""
    gen = torch.Generator().manual_seed(0)
    starts = torch.rand(B, T, generator=gen) < 1 / doc_len
    starts[:, 0] = True
    docs = starts.long().cumsum(-1)
    pos = torch.arange(T).expand(B, T)
    # patches: lengths 1..2*patch_len-1, the last row a quarter shorter (PAD bytes, empty slots)
    P = 2 * T // patch_len
    lengths = torch.randint(1, 2 * patch_len, (B, P), generator=gen)
    lengths = torch.where(lengths.cumsum(-1) <= T, lengths, 0)
    lengths[-1] = torch.where(lengths[-1].cumsum(-1) <= 3 * T // 4, lengths[-1], 0)
    P = int((lengths > 0).sum(-1).max())
    lengths = lengths[:, :P]
    patch_ids = lengths_to_ids(lengths, T)
    patch_pos = torch.arange(P).expand(B, P)
    starts_p = (lengths.cumsum(-1) - lengths).clamp(max=T - 1)
    patch_docs = torch.where(lengths > 0, docs.gather(1, starts_p), -1)
    q_seg = torch.where(lengths > 0, patch_pos, -2)
    out = {
        "local": MaskSpec(docs, docs, pos, pos, causal=True, window=window),
        "latent": MaskSpec(patch_docs, patch_docs, patch_pos, patch_pos, causal=True),
        "pool": MaskSpec(q_seg, patch_ids, patch_pos, pos, causal=False),
    }
    return {k: spec_to(s, device) for k, s in out.items()}


def spec_to(s: MaskSpec, device) -> MaskSpec:
    t = [x.contiguous().to(device) for x in (s.q_seg, s.k_seg, s.q_pos, s.k_pos)]
    return MaskSpec(*t, causal=s.causal, window=s.window)


def runner(backend: str, which: str, q, k, v, spec: MaskSpec, g):
    """The call to time: the forward (no autograd), or forward and backward."""
    if which == "fwd":

        def fwd():
            with torch.no_grad():
                return attention(q, k, v, spec, backend=backend)

        return fwd
    return lambda: torch.autograd.grad(attention(q, k, v, spec, backend=backend), (q, k, v), g)


def run(
    device: torch.device, quick: bool = False, reps: int = 20, deadline: float | None = None
) -> tuple[list[dict], str]:
    """Check and time every backend on the three masks -> (rows, notes). Stops before the
    next mask once past `deadline` (a `time.monotonic()` value; None = run everything)."""
    warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
    cuda = device.type == "cuda"
    if quick:
        B, T, H, Dh, doc_len, window = 2, 512, 4, 32, 200, 64
    else:
        B, T, H, Dh, doc_len, window = 8, 8192, 8, 64, 2000, 512
    dtype = torch.bfloat16 if cuda else torch.float32
    backends = ["sdpa", "flex"] + (["xformers"] if cuda and xformers_available() else [])
    passes = ["fwd", "fwd+bwd"] if cuda else ["fwd"]
    gen = torch.Generator().manual_seed(1)

    rows = []
    for name, spec in specs(B, T, doc_len, 4, window, device).items():
        if deadline is not None and time.monotonic() > deadline:
            break
        Tq, Tk = spec.q_seg.shape[1], spec.k_seg.shape[1]
        q, k, v = (
            torch.randn(B, H, n, Dh, generator=gen).to(device, dtype).requires_grad_(cuda)
            for n in (Tq, Tk, Tk)
        )
        g = torch.randn(B, H, Tq, Dh, generator=gen).to(device, dtype)
        with torch.no_grad():
            ref = attention(q, k, v, spec, backend="sdpa").float()
        base = {}
        for backend in backends:
            _memo.clear()
            t0 = time.perf_counter()
            with torch.no_grad():  # builds (and memoises) the block mask / plan
                out = attention(q, k, v, spec, backend=backend)
            if cuda:
                torch.cuda.synchronize()
            first_ms = 1e3 * (time.perf_counter() - t0)
            err = float((out.float() - ref).abs().max())
            for p in passes:
                ms = median_ms(runner(backend, p, q, k, v, spec, g), device, reps)
                base.setdefault(p, ms)  # sdpa runs first
                rows.append(
                    {"mask": name, "Tq": Tq, "Tk": Tk, "backend": backend, "pass": p,
                     "ms": ms, "speedup vs sdpa": base[p] / ms, "max abs diff": err,
                     "first call ms": first_ms}
                )  # fmt: skip
                print(rows[-1])

    notes = (
        f"B={B}, T={T} bytes, H={H}, Dh={Dh}, {dtype}, documents of ~{doc_len} bytes, "
        f"patches of ~4 bytes, window {window}; median of {reps} runs. "
        "`first call ms` includes building the block mask / plan (and compiling, on the first "
        "shape). `max abs diff` is against sdpa on the same inputs."
    )
    return rows, notes


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small shapes (the CPU setting)")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows, notes = run(device, args.quick, args.reps)
    tag = device.type + ("-quick" if args.quick else "")
    path = write_results(f"attention-{tag}", rows, "Attention backends on ByteLM masks", notes)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
