"""Growing a checkpoint: plan + headers -> output tensor jobs -> one streaming, atomic write.

engine: prepare (everything from headers; what --dry-run shows) and grow (the write).
tensor_jobs: each output tensor, its source and transform. provenance: surgeon.json, the model
card and the transformers check of config.json. tables: the dry-run tables."""

from modelsurgeon.grow.engine import Prepared, grow, prepare

__all__ = ["Prepared", "grow", "prepare"]
