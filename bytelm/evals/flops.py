"""Analytic FLOPs per byte and parameter counts for ByteTransformer and ByteLM.

Conventions (those of Kaplan et al. 2020 and Chinchilla, made exact for this
architecture):

- A matmul (m x k) . (k x n) costs 2mkn FLOPs. Norms, RoPE, softmax, SiLU,
  residual adds and pooling sums are not counted: they are O(D) per position
  where a matmul is O(D^2).
- Embedding lookups (the byte table and the hashed n-gram tables) cost zero;
  the unembedding is a matmul and counts.
- Training = forward + backward = 3 x forward (the backward pass computes one
  gradient for the input and one for the weights of every matmul, attention
  included).
- Attention scores and values cost 4 * ctx * D per query, where ctx is the
  number of keys the query may read: causal, within the window, within the
  document. `mean_context` averages it over a sequence. With
  `attention="dense"` every query is charged every key of the call instead,
  which is what the reference SDPA with a boolean mask computes, and what
  `torch.utils.flop_counter.FlopCounterMode` charges for it.

ByteLM per byte, at r bytes per patch and seq_len bytes per window:

    encoder   L_e * block(D, ctx over seq_len in the encoder window)
    pool      attn only: kv 4 D^2 per byte, q and out 4 D^2 per patch, scores 4 D per byte
    latent    (to_latent 2 D G + L_g * block(G, ctx over seq_len / r patches)
               + from_latent 2 G D) / r
    decoder   L_d * block(D, ctx in the decoder window)
    heads     K blocks (or K - 1 residual maps, see bytelm.model.heads) + K * unembed 2 D V;
              in training, heads 2..K at the out_heads.draft_sample share of the bytes
    router    learned patcher only: W_q h, W_k h 4 D^2 per byte, and the smoothing of the
              latent outputs, one (P x P) . (P x D) matmul per window of P = seq_len / r
              patches: 2 P^2 D / seq_len per byte
    entropy   the entropy model's forward, when one is given (it is frozen: never 3x)

with block(D, ctx) = 8 D^2 (q, kv, out) + 6 D F (SwiGLU) + 4 ctx D and F the
SwiGLU hidden size. Parameter counts are exact (`sum(p.numel())` of the built
model); "embedding" is the lookup tables only, so the unembedding is in
"non_embedding", as in Kaplan's N when weights are untied.
"""

from __future__ import annotations

import math

from bytelm.config import ByteLMConfig, TransformerConfig
from bytelm.vocab import VOCAB_SIZE

ATTENTION_MODES = ("causal", "dense")


def _err(msg: str) -> ValueError:
    return ValueError(f"bytelm: {msg}")


def mlp_hidden(dim: int, mlp_ratio: float) -> int:
    """SwiGLU hidden size: mlp_ratio * dim rounded up to a multiple of 16 (as `layers.SwiGLU`)."""
    return 16 * math.ceil(mlp_ratio * dim / 16)


def mean_context(n: float, window: int = 0) -> float:
    """Mean keys per query of causal attention over positions 1..n, each reading
    min(position, window) keys (window 0 = all previous). n may be fractional
    (a sequence of seq_len / r patches)."""
    if n <= 0:
        return 0.0
    w = window if window > 0 else n
    if w >= n:
        return (n + 1) / 2
    return (w * (w + 1) / 2 + (n - w) * w) / n


def block_flops(cfg: TransformerConfig, ctx: float) -> float:
    """Forward FLOPs of one block at one position that reads `ctx` keys."""
    D, F = cfg.dim, mlp_hidden(cfg.dim, cfg.mlp_ratio)
    return 8 * D * D + 6 * D * F + 4 * ctx * D


def _ctx(cfg: TransformerConfig, n: float, doc_len: float | None, attention: str) -> float:
    """Keys per query for a stack over n positions (bytes or patches)."""
    if attention == "dense":
        return n  # every query against every key of the call, masked or not
    if doc_len is not None and doc_len < n:
        n = doc_len  # each document restarts the context
    return mean_context(n, cfg.window)


def _stack_flops(cfg: TransformerConfig, n: float, doc_len, attention) -> float:
    return cfg.n_layers * block_flops(cfg, _ctx(cfg, n, doc_len, attention))


def flops_per_byte(
    model_cfg: ByteLMConfig | TransformerConfig,
    bytes_per_patch: float = 1.0,
    seq_len: int = 512,
    training: bool = True,
    entropy_model: TransformerConfig | None = None,
    *,
    doc_len: float | None = None,
    attention: str = "causal",
) -> dict[str, float]:
    """FLOPs per byte of a model, by stage, and their sum under "total".

    model_cfg: a ByteLMConfig (hierarchical) or TransformerConfig (plain
        ByteTransformer; bytes_per_patch is ignored).
    bytes_per_patch: the mean patch length the patcher achieves on the data
        (measure it: fixed:k gives slightly less than k, because patches also
        end at EOS and at window edges).
    seq_len: bytes per window; attention context is averaged over it.
    training: forward + backward (3x) instead of forward only.
    entropy_model: the entropy patcher's model, counted forward-only because
        it is frozen; leave it None when entropies are precomputed.
    doc_len: mean document length in bytes, if documents are shorter than a
        window (attention restarts at each document); None = one per window.
    attention: "causal" counts the keys a query may read; "dense" charges every
        key of the call, as a dense masked SDPA (and FlopCounterMode) does.

    Keys, ByteLM: encoder, pool, latent, decoder, heads, (router: the learned patcher),
    entropy_model, total.
    Keys, ByteTransformer: layers, unembed, entropy_model, total.
    """
    if attention not in ATTENTION_MODES:
        raise _err(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {attention!r}")
    if not bytes_per_patch >= 1:
        raise _err(f"bytes_per_patch must be >= 1, got {bytes_per_patch}")
    if seq_len < 1:
        raise _err(f"seq_len must be >= 1, got {seq_len}")
    mult = 3.0 if training else 1.0
    V = VOCAB_SIZE
    if isinstance(model_cfg, TransformerConfig):
        out = {
            "layers": mult * _stack_flops(model_cfg, seq_len, doc_len, attention),
            "unembed": mult * 2 * model_cfg.dim * V,
        }
    elif isinstance(model_cfg, ByteLMConfig):
        cfg, r = model_cfg, float(bytes_per_patch)
        D, G = cfg.encoder.dim, cfg.latent.dim
        n_patches = seq_len / r
        pool = 0.0
        if cfg.pooling == "attn":
            # kv of every byte; q and out per patch; each patch query reads its own r bytes
            keys = seq_len if attention == "dense" else r
            pool = 4 * D * D + (4 * D * D + 4 * keys * D) / r
        patch_doc = None if doc_len is None else doc_len / r
        latent = 4 * D * G + _stack_flops(cfg.latent, n_patches, patch_doc, attention)
        head = _head_flops(cfg, _ctx(cfg.decoder, seq_len, doc_len, attention))
        # heads 2..K train at a sampled share of positions; inference computes them everywhere
        share = cfg.out_heads.draft_sample if training else 1.0
        out = {
            "encoder": mult * _stack_flops(cfg.encoder, seq_len, doc_len, attention),
            "pool": mult * pool,
            "latent": mult * latent / r,
            "decoder": mult * _stack_flops(cfg.decoder, seq_len, doc_len, attention),
            "heads": mult * (2 * D * V + share * (head + (cfg.out_heads.n - 1) * 2 * D * V)),
        }
        if cfg.patcher.name == "learned":
            out["router"] = mult * (4 * D * D + 2 * n_patches * n_patches * D / seq_len)
    else:
        raise _err(
            f"flops_per_byte needs a ByteLMConfig or TransformerConfig, got {type(model_cfg).__name__}"
        )
    out["entropy_model"] = 0.0
    if entropy_model is not None:  # frozen: forward only, even in training
        out["entropy_model"] = flops_per_byte(
            entropy_model, seq_len=seq_len, training=False, doc_len=doc_len, attention=attention
        )["total"]
    out["total"] = sum(out.values())
    return out


def _head_flops(cfg: ByteLMConfig, ctx: float) -> float:
    """The output heads' layers per byte, unembedding aside (bytelm.model.heads): K blocks, or
    K - 1 residual maps (mlp, chain: two D x D matrices, linear: one; a chain head's extra
    input is a sum with embeddings the encoder already looked up)."""
    h, D = cfg.out_heads, cfg.decoder.dim
    if h.kind == "block":
        return h.n * block_flops(cfg.decoder, ctx)
    return (h.n - 1) * 2 * D * D * (1 if h.kind == "linear" else 2)


def _head_params(cfg: ByteLMConfig) -> int:
    h, D = cfg.out_heads, cfg.decoder.dim
    if h.kind == "block":
        return h.n * _block_params(cfg.decoder)
    return (h.n - 1) * (D + D * D * (1 if h.kind == "linear" else 2))


def _block_params(cfg: TransformerConfig) -> int:
    D, F = cfg.dim, mlp_hidden(cfg.dim, cfg.mlp_ratio)
    return 2 * D + 4 * D * D + 3 * D * F  # two RMSNorms, q/kv/out, gate_up/down


def _stack_params(cfg: TransformerConfig) -> int:
    return cfg.n_layers * _block_params(cfg)


def param_counts(model_cfg: ByteLMConfig | TransformerConfig) -> dict[str, int]:
    """Exact parameter counts, by stage, plus "embedding", "non_embedding", "total".

    "embedding" is the lookup tables (byte and hashed n-gram); everything else,
    the unembedding included, is "non_embedding".
    Stages, ByteLM: encoder, pool, latent (to_latent, the stack, its norm,
    from_latent), decoder, heads (K blocks, final norm, shared unembedding), and router
    (W_q, W_k) for the learned patcher.
    Stages, ByteTransformer: layers, unembed (final norm and unembedding).
    """
    from bytelm.model.embed import auto_buckets  # the one place the default lives

    V = VOCAB_SIZE
    if isinstance(model_cfg, TransformerConfig):
        D, ns = model_cfg.dim, model_cfg.ngram_ns
        ngram = len(ns) * (model_cfg.ngram_buckets or auto_buckets(D)) * D
        out = {"layers": _stack_params(model_cfg), "unembed": D + D * V, "embedding": V * D + ngram}
    elif isinstance(model_cfg, ByteLMConfig):
        cfg = model_cfg
        D, G = cfg.encoder.dim, cfg.latent.dim
        buckets = cfg.ngram.buckets or auto_buckets(D)
        out = {
            "encoder": _stack_params(cfg.encoder),
            "pool": (D + 4 * D * D) if cfg.pooling == "attn" else 0,
            "latent": D * G + _stack_params(cfg.latent) + G + G * D,
            "decoder": _stack_params(cfg.decoder),
            "heads": _head_params(cfg) + D + D * V,
            "embedding": V * D + len(cfg.ngram.ns) * buckets * D,
        }
        if cfg.patcher.name == "learned":
            out["router"] = 2 * D * D  # W_q, W_k
    else:
        raise _err(
            f"param_counts needs a ByteLMConfig or TransformerConfig, got {type(model_cfg).__name__}"
        )
    out["non_embedding"] = sum(v for k, v in out.items() if k != "embedding")
    out["total"] = out["non_embedding"] + out["embedding"]
    return out


def run_size(run_cfg) -> dict[str, float]:
    """What a training run logs about its size (a RunConfig in).

    "params_non_embedding" always; "flops_per_byte" (training) when the config
    fixes the patch rate: fixed:k gives k (the data's mean is a little lower,
    since patches also end at EOS), a calibrated entropy patcher its measured
    rate, a learned one its calibrated rate or else its ratio-loss target (which training
    approaches). space and bpe patches depend on the data, so they get no FLOPs here.
    """
    model = run_cfg.transformer if run_cfg.arch == "transformer" else run_cfg.model
    out: dict[str, float] = {"params_non_embedding": param_counts(model)["non_embedding"]}
    r: float | None = 1.0
    if run_cfg.arch == "bytelm":
        pc = run_cfg.model.patcher
        measured = pc.measured_bytes_per_patch or pc.target_bytes_per_patch
        rates = {"fixed": pc.k, "entropy": measured, "learned": measured}
        r = rates.get(pc.name)
    if r:
        out["flops_per_byte"] = flops_per_byte(model, r, run_cfg.data.seq_len)["total"]
    return out
