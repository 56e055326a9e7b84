"""Models: the plain ByteTransformer and the hierarchical ByteLM.

Building a model from a RunConfig (which may need an entropy model loaded from
disk) is `bytelm.checkpoint.build_model`, one layer up.
"""

from bytelm.model.bytelm import ByteLM
from bytelm.model.transformer import ByteTransformer

__all__ = ["ByteLM", "ByteTransformer"]
