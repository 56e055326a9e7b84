"""bytelm: tokenizer-free byte-level language models.

from bytelm import ByteLM, ByteLMConfig, load_model
model, cfg = load_model("runs/demo/checkpoint")
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
