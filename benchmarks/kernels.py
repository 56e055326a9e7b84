"""Kernel benchmarks: each kernel against its reference and the obvious PyTorch ops.

    python -m benchmarks.kernels                 # CUDA: full shapes (B*T = 64k bytes)
    python -m benchmarks.kernels --quick         # small shapes; the only sensible run on CPU

Pooling (sum/mean/max) and unpooling are timed forward and forward+backward,
over D in {256, 512, 1024} and mean patch lengths {2, 4, 8}. Implementations:
`triton` (CUDA only), `reference` (bytelm's spec, scatter_add/scatter_reduce),
`index_add` (sum/mean) and `segment_reduce` (torch.segment_reduce) for pooling,
`index_select` for unpooling. The verify step is timed at batch 1 and 64.

Every implementation is first checked against the reference on the benchmark
inputs. Reported per row: median time, speedup over the reference in the same
run, and effective bandwidth, i.e. the bytes the op must move at least (inputs
read once, outputs written once) over the time, with its share of the peak
given by --peak-gbps (default: H100 SXM HBM3, 3350 GB/s). Results go to
benchmarks/results/kernels-<device>.{csv,md} with the machine they ran on.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import re
import time
from pathlib import Path

import torch

from benchmarks.common import median_ms
from bytelm.kernels.pooling import pool, unpool
from bytelm.kernels.pooling.reference import pool_reference, unpool_reference
from bytelm.kernels.verify import verify
from bytelm.patchers.base import lengths_to_ids
from bytelm.vocab import VOCAB_SIZE

FIELDS = ["op", "mode", "pass", "B", "T", "D", "mean_len", "impl", "ms", "speedup", "GB/s", "%peak"]


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


def make_patch_lengths(B: int, T: int, mean_len: int, gen: torch.Generator) -> torch.Tensor:
    """Rows fully covered by patches of length uniform in [1, 2*mean_len - 1], right-padded."""
    rows = []
    for _ in range(B):
        lens = torch.randint(1, 2 * mean_len, (2 * T // mean_len + 8,), generator=gen)
        ends = lens.cumsum(0)
        n = int((ends < T).sum()) + 1
        lens = lens[:n].clone()
        lens[-1] = T - (ends[n - 2].item() if n > 1 else 0)
        rows.append(lens)
    P = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r.new_zeros(P - len(r))]) for r in rows])


# ---------------------------------------------------------------- pooling alternatives


def pool_index_add(x, patch_lengths, mode):
    B, T, D = x.shape
    P = patch_lengths.shape[1]
    ids = lengths_to_ids(patch_lengths, T)
    seg = (ids + torch.arange(B, device=x.device)[:, None] * P).clamp(min=0).reshape(-1)
    out = x.new_zeros(B * P, D).index_add(0, seg, x.reshape(B * T, D))
    if mode == "mean":
        out = out / patch_lengths.reshape(-1, 1).clamp(min=1).to(x.dtype)
    return out.reshape(B, P, D)


def pool_segment_reduce(x, patch_lengths, mode):
    # rows are fully covered here, as segment_reduce requires; empty slots give nan/-inf
    out = torch.segment_reduce(x, mode, lengths=patch_lengths, axis=1, unsafe=True)
    return torch.where((patch_lengths > 0)[..., None], out, 0.0)


def unpool_index_select(h, index):
    B, P, D = h.shape
    flat = (index.clamp(min=0) + torch.arange(B, device=h.device)[:, None] * P).reshape(-1)
    out = h.reshape(B * P, D).index_select(0, flat).reshape(*index.shape, D)
    return out * (index >= 0)[..., None].to(h.dtype)


def time_op(rows, meta, impls, inputs, ref_name, nbytes, args, device):
    """Check every impl against the reference, then time forward and forward+backward."""
    ref_out = impls[ref_name](*inputs)
    for name, fn in impls.items():
        out = fn(*inputs)
        tol = 1e-2 if out.dtype != torch.float32 else 1e-4
        torch.testing.assert_close(out.float(), ref_out.float(), atol=tol, rtol=tol, msg=name)
    for pass_ in ("fwd", "fwd+bwd"):
        times = {}
        for name, fn in impls.items():
            x, *rest = inputs
            xg = x.detach().requires_grad_(pass_ == "fwd+bwd")
            grad = torch.randn_like(ref_out)

            def run(fn=fn, xg=xg, rest=rest, grad=grad, pass_=pass_):
                out = fn(xg, *rest)
                if pass_ == "fwd+bwd":
                    torch.autograd.grad(out, xg, grad)

            if pass_ == "fwd":
                with torch.no_grad():
                    times[name] = median_ms(run, device, args.reps)
            else:
                times[name] = median_ms(run, device, args.reps)
        moved = nbytes[pass_]
        for name, ms in times.items():
            gbps = moved / (ms * 1e-3) / 1e9
            rows.append(
                {
                    **meta,
                    "pass": pass_,
                    "impl": name,
                    "ms": round(ms, 4),
                    "speedup": round(times[ref_name] / ms, 2),
                    "GB/s": round(gbps, 1),
                    "%peak": round(100 * gbps / args.peak_gbps, 1),
                }
            )


def run_pooling(rows, args, device, use_triton, deadline=None):
    """Append pooling and unpooling rows; stop before a new (D, mean_len) once past `deadline`
    (a `time.monotonic()` value; None = run everything)."""
    B, T = (4, 1024) if args.quick else (16, 4096)  # B*T = 4k or 64k bytes
    dims = (256,) if args.quick else (256, 512, 1024)
    lens = (2, 8) if args.quick else (2, 4, 8)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    es = torch.tensor([], dtype=dtype).element_size()
    gen = torch.Generator().manual_seed(0)
    for D in dims:
        for mean_len in lens:
            if deadline is not None and time.monotonic() > deadline:
                return
            pl = make_patch_lengths(B, T, mean_len, gen).to(device)
            P = pl.shape[1]
            x = torch.randn(B, T, D, generator=gen).to(dtype).to(device)
            N, S = B * T * D * es, B * P * D * es
            for mode in ("sum", "mean", "max"):
                impls = {"reference": lambda x, pl, m=mode: pool_reference(x, pl, m)}
                if use_triton:
                    impls["triton"] = lambda x, pl, m=mode: pool(x, pl, m, backend="triton")
                if mode != "max":
                    impls["index_add"] = lambda x, pl, m=mode: pool_index_add(x, pl, m)
                impls["segment_reduce"] = lambda x, pl, m=mode: pool_segment_reduce(x, pl, m)
                # read x, write out (+ the int32 argmax for max); backward: read grad, write grad_x
                fwd = N + S + (B * P * D * 4 if mode == "max" else 0)
                bwd = S + N + (B * P * D * 4 if mode == "max" else 0)
                meta = {"op": "pool", "mode": mode, "B": B, "T": T, "D": D, "mean_len": mean_len}
                nbytes = {"fwd": fwd, "fwd+bwd": fwd + bwd}
                time_op(rows, meta, impls, (x, pl), "reference", nbytes, args, device)

            # unpool with the model's index: byte t reads the last patch complete by t
            ends = torch.zeros(B, T, dtype=torch.bool, device=device)
            ids = lengths_to_ids(pl, T)
            ends[:, :-1] = ids[:, 1:] != ids[:, :-1]
            ends[:, -1] = True
            index = ids - (~ends).long()
            h = torch.randn(B, P, D, generator=gen).to(dtype).to(device)
            impls = {"reference": unpool_reference, "index_select": unpool_index_select}
            if use_triton:
                impls["triton"] = lambda h, i: unpool(h, i, backend="triton")
            meta = {"op": "unpool", "mode": "-", "B": B, "T": T, "D": D, "mean_len": mean_len}
            nbytes = {"fwd": S + N, "fwd+bwd": 2 * (S + N)}
            time_op(rows, meta, impls, (h, index), "reference", nbytes, args, device)


def run_verify(rows, args, device, use_triton):
    K, V = 4, VOCAB_SIZE
    gen = torch.Generator().manual_seed(0)
    for B in (1, 64):
        for temperature in (0.0, 1.0):
            q = torch.softmax(torch.randn(B, K, V, generator=gen), -1)
            logits = torch.randn(B, K + 1, V, generator=gen)
            drafts = torch.multinomial(q.reshape(-1, V), 1, generator=gen).reshape(B, K)
            ua, us = torch.rand(B, K, generator=gen), torch.rand(B, generator=gen)
            inputs = [t.to(device) for t in (drafts, q, logits)] + [temperature]
            inputs += [ua.to(device), us.to(device)]
            impls = ["reference"] + (["triton"] if use_triton else [])
            ref = verify(*inputs, backend="reference")
            times = {}
            for name in impls:
                got = verify(*inputs, backend=name)
                assert all(torch.equal(a, b) for a, b in zip(got, ref)), name
                times[name] = median_ms(
                    lambda n=name, i=inputs: verify(*i, backend=n), device, args.reps
                )
            moved = B * (K + 1) * V * 4 + (B * K * V * 4 if temperature else 0)
            for name, ms in times.items():
                gbps = moved / (ms * 1e-3) / 1e9
                rows.append(
                    {
                        "op": "verify",
                        "mode": "greedy" if temperature == 0 else "sample",
                        "pass": "fwd",
                        "B": B,
                        "T": K,
                        "D": V,
                        "mean_len": "-",
                        "impl": name,
                        "ms": round(ms, 4),
                        "speedup": round(times["reference"] / ms, 2),
                        "GB/s": round(gbps, 2),
                        "%peak": round(100 * gbps / args.peak_gbps, 2),
                    }
                )


def run(
    device: torch.device,
    quick: bool = False,
    reps: int | None = None,
    peak_gbps: float = 3350.0,
    deadline: float | None = None,
) -> list[dict]:
    """Every benchmark row (FIELDS) on `device`: verify first (it is quick), then pooling and
    unpooling until `deadline` (a `time.monotonic()` value). Triton runs only on CUDA."""
    args = argparse.Namespace(quick=quick, reps=reps or (5 if quick else 50), peak_gbps=peak_gbps)
    use_triton = device.type == "cuda"
    verify_rows: list[dict] = []
    run_verify(verify_rows, args, device, use_triton)
    rows: list[dict] = []
    run_pooling(rows, args, device, use_triton, deadline)
    return rows + verify_rows


def markdown(rows, header: str) -> str:
    lines = [header, "", "| " + " | ".join(FIELDS) + " |", "|" + "---|" * len(FIELDS)]
    lines += ["| " + " | ".join(str(r[f]) for f in FIELDS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repetitions")
    parser.add_argument("--peak-gbps", type=float, default=3350.0, help="peak memory GB/s")
    parser.add_argument("--reps", type=int, default=None, help="timed runs per measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 50)
    device = torch.device(args.device)
    name = machine(device)
    note = ""
    if device.type != "cuda":
        note = "Triton GPU numbers are not measured: no CUDA device (reference vs PyTorch only)."
        print(note)

    rows = run(device, args.quick, args.reps, args.peak_gbps)

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = (
        f"# Kernel benchmarks\n\nmachine: {name}; torch {torch.__version__}; {stamp}; "
        f"{'quick' if args.quick else 'full'} run; peak {args.peak_gbps:g} GB/s; "
        "speedup is over `reference` in the same run; GB/s is effective (minimal bytes moved)."
        + (f"\n\n{note}" if note else "")
    )
    table = markdown(rows, header)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] + (
        "-quick" if args.quick else ""
    )
    with open(args.out / f"kernels-{slug}.csv", "w", newline="") as f:
        f.write(f"# machine: {name}; torch {torch.__version__}; {stamp}\n")
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / f"kernels-{slug}.md").write_text(table)
    print(f"wrote {args.out}/kernels-{slug}.csv and .md")


if __name__ == "__main__":
    main()
