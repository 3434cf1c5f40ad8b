"""Checkpoint conversion: .bin <-> safetensors, dtype and shard changes, GGUF export."""

from modelsurgeon.convert.engine import DEFAULT_MAX_SHARD, Conversion, convert, prepare_conversion
from modelsurgeon.convert.options import DTYPES, FORMATS

__all__ = ["DEFAULT_MAX_SHARD", "DTYPES", "FORMATS", "Conversion", "convert", "prepare_conversion"]
