"""The compiled decode step.

`ByteLM.new_cache(..., compile=True)` (and `generate(..., compile=True)`) makes a cache
whose decode calls run compiled, in one of two ways:

- On CUDA, the whole fixed-shape step `ByteLM._decode_fixed`, in mode "reduce-overhead"
  (CUDA graphs): every call of n bytes has the same shapes and reads nothing back from the
  device, so one graph serves every decode call of that width. The tensors the step writes
  in place (KV caches, position ring, latent outputs) are marked as static addresses, and
  the small tensors it returns are cloned out of the graph's memory pool, because a replay
  overwrites the previous one's outputs and rollback reads the state before a call.
- On CPU, a hybrid: the byte-level halves of the step (`_encode_step`: patcher, embedding,
  encoder, router; `_decode_tail`: unpooling, decoder, heads) compiled, and the latent
  between them eager, only when a patch closes, over the patches stored so far (one host
  sync per call, free on a CPU). The fixed-shape step steps the latent on every byte over
  every slot of its cache, which on CPU costs more than compiling saves
  (`benchmarks/results/decode_compile.md`).

Prefill calls (those with `n_valid`) stay eager: their width varies with the prompt.
"""

from __future__ import annotations

import torch

from bytelm.patchers import only_first


def compiled_step(model):
    """The compiled step of a model -> fn(ids, cache, pos, docs, until_close) -> (logits,
    ends), made once per model and kept on it (not a submodule)."""
    fn = model.__dict__.get("_compiled_decode")
    if fn is None:
        if model.unembed.weight.device.type == "cuda":
            fn = torch.compile(model._decode_fixed, mode="reduce-overhead", dynamic=False)
        else:
            encode = torch.compile(model._encode_step, dynamic=False)
            tail = torch.compile(model._decode_tail, dynamic=False)

            def fn(ids, cache, pos, docs, until_close=False):
                h, ends, prob = encode(ids, cache, pos, docs)
                used = only_first(ends) if until_close else ends
                model._latent_part(cache, pos, used, prob, fixed=False)
                return tail(h, used, cache, pos, docs), ends

        model.__dict__["_compiled_decode"] = fn
    return fn


def prepare_cache(cache) -> None:
    """Mark what the compiled step writes in place as static addresses (CUDA graphs)."""
    if cache.length.device.type != "cuda":
        return
    mark = torch._dynamo.mark_static_address
    for t in (cache.ring_ids, cache.ring_doc, cache.ring_h, cache.lat_out, cache.ring_d):
        if t is not None:
            mark(t)
    for kv in (cache.enc, cache.lat, cache.dec):
        for t in (*kv.k, *kv.v, kv.pos, kv.doc):
            mark(t)


def run_compiled(model, ids, cache, pos, docs, until_close=False):
    """One compiled decode step -> (logits, ends), outside the graph's memory on CUDA."""
    fn = compiled_step(model)
    if ids.device.type != "cuda":
        return fn(ids, cache, pos, docs, until_close)
    torch.compiler.cudagraph_mark_step_begin()
    logits, ends = fn(ids, cache, pos, docs, until_close)
    st = cache.patcher_state
    st.patch_len, st.prev = st.patch_len.clone(), st.prev.clone()
    return logits.clone(), ends.clone()
