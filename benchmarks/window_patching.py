"""Held-out bpb of a ByteLM checkpoint, its eval windows patched the old way (each window on its
own: a cold entropy context, the max_patch_len phase and H_{t-1} restarting at the window start)
and the new way (each window continues its documents' patching; entropies from the per-document
cache), on the same held-out bytes. Also bpb by position in the window.

    python -m benchmarks.window_patching CKPT MAX_BYTES   # results: benchmarks/results/window_patching.md
"""

import json
import math
import sys
import time

import torch
import torch.nn.functional as F

from bytelm.checkpoint import load_model
from bytelm.data import load_corpus
from bytelm.evals.bpb import eval_batches_with_ends
from bytelm.model.layers import doc_ids
from bytelm.model.loss import target_mask
from bytelm.patchers import ends_to_lengths
from bytelm.vocab import PAD

path, max_bytes = sys.argv[1], int(sys.argv[2])
model, cfg = load_model(path)
model.eval()
held = load_corpus(cfg.data, progress=False)["heldout"]
T, B = cfg.data.seq_len, 8


def run(batches):
    nats = torch.zeros(T - 1, dtype=torch.float64)
    count = torch.zeros(T - 1, dtype=torch.float64)
    n = p = 0
    ends_all = []
    t0 = time.process_time()
    with torch.no_grad():
        for ids, ends in batches:
            logits = model(ids, ends)[:, :, 0].float()
            valid = target_mask(ids, doc_ids(ids), 1)
            ce = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="none",
            ).view(ids.shape[0], T - 1)
            nats += (ce * valid).sum(0).double()
            count += valid.sum(0).double()
            lengths = ends_to_lengths(ends, (ids != PAD).sum(-1))
            n, p = n + int(lengths.sum()), p + int((lengths > 0).sum())
            ends_all.append(ends & (ids != PAD))
    bpb = lambda a, b: float(nats[a:b].sum() / (math.log(2) * count[a:b].sum()))
    return {
        "bpb": bpb(0, T),
        "bpb_first16": bpb(0, 16),
        "bpb_rest": bpb(16, T),
        "bytes": int(count.sum()),
        "bytes_per_patch": n / p,
        "cpu_s": time.process_time() - t0,
    }, torch.cat(ends_all)


old_batches = ((ids, model.patcher.ends(ids)) for ids in held.eval_batches(T, B, max_bytes))
old, e_old = run(old_batches)
new, e_new = run(eval_batches_with_ends(model, held, T, B, max_bytes))
differ = float((e_old != e_new).float().mean())
print(
    json.dumps(
        {
            "checkpoint": path,
            "patcher": cfg.model.patcher.name,
            "max_bytes": max_bytes,
            "old": old,
            "new": new,
            "ends_differ_frac": differ,
        },
        indent=1,
    )
)
