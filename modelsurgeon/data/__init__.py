"""Training and evaluation data: `--data` specs, text-field detection, packing, `synthetic:arith`.

Importing this package is cheap (no torch, no datasets); they load when data is read.
"""

from modelsurgeon.data.pack import PackedData, build_blocks
from modelsurgeon.data.spec import DataSpec, parse_data_spec

__all__ = ["DataSpec", "PackedData", "build_blocks", "parse_data_spec"]
