"""Checkpoint conversion: .bin <-> safetensors, dtype and shard changes, GGUF export."""

from modelsurgeon.convert.engine import Conversion, convert, prepare_conversion
from modelsurgeon.convert.options import DTYPES, FORMATS

__all__ = ["DTYPES", "FORMATS", "Conversion", "convert", "prepare_conversion"]
