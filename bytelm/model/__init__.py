"""Models: the plain ByteTransformer and the hierarchical ByteLM."""

from bytelm.model.bytelm import ByteLM
from bytelm.model.transformer import ByteTransformer

__all__ = ["ByteLM", "ByteTransformer", "build_model"]


def build_model(run_cfg):
    """A RunConfig -> the model its `arch` names."""
    if run_cfg.arch == "transformer":
        return ByteTransformer(run_cfg.transformer, run_cfg.model.attn_backend)
    return ByteLM(run_cfg.model)
