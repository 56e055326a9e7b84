"""bytelm: tokenizer-free byte-level language models.

from bytelm import ByteLM, ByteLMConfig, load_model
model, cfg = load_model("runs/demo/checkpoint")
"""

from bytelm.checkpoint import load_model, save_checkpoint
from bytelm.config import (
    ByteLMConfig,
    HeadsConfig,
    NGramConfig,
    PatcherConfig,
    RunConfig,
    TrainConfig,
    TransformerConfig,
    load_preset,
)
from bytelm.data import ByteCorpus, DataConfig, load_corpus
from bytelm.evals.bpb import evaluate_bpb
from bytelm.generate import GenerationConfig, GenerationResult, generate  # shadows the module name
from bytelm.model import ByteLM, ByteTransformer, build_model
from bytelm.patchers import FixedPatcher, SpacePatcher, make_patcher
from bytelm.vocab import BOS, EOS, PAD, VOCAB_SIZE, decode, encode

__all__ = [
    "BOS",
    "EOS",
    "PAD",
    "VOCAB_SIZE",
    "ByteCorpus",
    "ByteLM",
    "ByteLMConfig",
    "ByteTransformer",
    "DataConfig",
    "FixedPatcher",
    "GenerationConfig",
    "GenerationResult",
    "HeadsConfig",
    "NGramConfig",
    "PatcherConfig",
    "RunConfig",
    "SpacePatcher",
    "TrainConfig",
    "TransformerConfig",
    "build_model",
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
