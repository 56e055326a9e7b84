"""bytelm: tokenizer-free byte-level language models.

    from bytelm import ByteLM, ByteLMConfig, load_model
    model, cfg = load_model("runs/demo/checkpoint")

Layers. Imports go one way, down this list, never back up (function-level
imports included); a lower layer receives what it needs from a higher one as an
argument.

    cli                         every `bytelm` command and its parser (bytelm/cli/)
    train, generate, evals,     the Trainer, decoding, bpb / compression / FLOPs /
    demo, viz                   scaling sweeps and fits, the demo, patch pictures
    checkpoint                  save and load; builds models: loads an entropy model,
                                hands it to the entropy patcher, the patcher to ByteLM
    model                       layers, ByteTransformer, ByteLM, static caches
    patchers                    the boundary-source protocol and patch contract, fixed,
                                space, bpe, entropy (handed its scorer, never loading it)
    kernels                     attention, pooling, verify (reference + Triton)
    config                      frozen dataclasses, presets (bytelm/configs/*.toml, read
                                with importlib.resources) and every shared default
    data, vocab                 corpora -> memory-mapped byte streams; byte ids

`kernels` reads the patch contract helpers from `patchers.base`, which depends on
nothing but `vocab`; no module of `patchers` imports `model` or `checkpoint`.
"""

from bytelm.checkpoint import build_model, build_patcher, load_model, save_checkpoint
from bytelm.config import (
    ByteLMConfig,
    NGramConfig,
    OutputHeadsConfig,
    PatcherConfig,
    RunConfig,
    TrainConfig,
    TransformerConfig,
    load_preset,
)
from bytelm.data import ByteCorpus, DataConfig, load_corpus
from bytelm.evals.bpb import evaluate_bpb
from bytelm.generate import GenerationConfig, GenerationResult, generate  # shadows the module name
from bytelm.model import ByteLM, ByteTransformer
from bytelm.patchers import BoundarySource, EntropyPatcher, FixedPatcher, SpacePatcher, make_patcher
from bytelm.vocab import BOS, EOS, PAD, VOCAB_SIZE, decode, encode

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "VOCAB_SIZE",
    "BoundarySource",
    "ByteCorpus",
    "ByteLM",
    "ByteLMConfig",
    "ByteTransformer",
    "DataConfig",
    "EntropyPatcher",
    "FixedPatcher",
    "GenerationConfig",
    "GenerationResult",
    "OutputHeadsConfig",
    "NGramConfig",
    "PatcherConfig",
    "RunConfig",
    "SpacePatcher",
    "TrainConfig",
    "TransformerConfig",
    "build_model",
    "build_patcher",
    "decode",
    "encode",
    "evaluate_bpb",
    "generate",
    "load_corpus",
    "load_model",
    "load_preset",
    "make_patcher",
    "save_checkpoint",
]

__version__ = "0.1.0"
