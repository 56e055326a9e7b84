"""The compiled decode step: `torch.compile` of `ByteLM._decode_fixed`.

`ByteLM.new_cache(..., compile=True)` (and `generate(..., compile=True)`) makes a cache
whose decode calls run the fixed-shape step compiled: every call of n bytes has the same
shapes and reads nothing back from the device, so one graph serves every decode call of
that width. On CUDA the mode is "reduce-overhead" (CUDA graphs): the tensors the step
writes in place (KV caches, position ring, latent outputs) are marked as static addresses,
and the small tensors it returns are cloned out of the graph's memory pool, because a
replay overwrites the previous one's outputs and rollback reads the state before a call.
On CPU the default mode (fused kernels, no graphs).

Prefill calls (those with `n_valid`) stay eager: their width varies with the prompt.
"""

from __future__ import annotations

import torch


def compiled_step(model):
    """model._decode_fixed, compiled once per model and kept on it (not a submodule)."""
    fn = model.__dict__.get("_compiled_decode")
    if fn is None:
        cuda = model.unembed.weight.device.type == "cuda"
        fn = torch.compile(
            model._decode_fixed, mode="reduce-overhead" if cuda else None, dynamic=False
        )
        model.__dict__["_compiled_decode"] = fn
    return fn


def prepare_cache(cache) -> None:
    """Mark what the compiled step writes in place as static addresses (CUDA graphs)."""
    if cache.length.device.type != "cuda":
        return
    mark = torch._dynamo.mark_static_address
    for t in (cache.ring_ids, cache.ring_doc, cache.ring_h, cache.lat_out):
        mark(t)
    for kv in (cache.enc, cache.lat, cache.dec):
        for t in (*kv.k, *kv.v, kv.pos, kv.doc):
            mark(t)


def run_compiled(model, ids, cache, pos, docs):
    """One compiled decode step -> (logits, ends), outside the graph's memory on CUDA."""
    fn = compiled_step(model)
    if ids.device.type != "cuda":
        return fn(ids, cache, pos, docs)
    torch.compiler.cudagraph_mark_step_begin()
    logits, ends = fn(ids, cache, pos, docs)
    st = cache.patcher_state
    st.patch_len, st.prev = st.patch_len.clone(), st.prev.clone()
    return logits.clone(), ends.clone()
