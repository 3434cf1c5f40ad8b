"""The output tensor list: every output tensor with its source and the transform that makes it
(byte copy, branch-scale fold, width transform), built from headers alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from modelsurgeon.arch.spec import ArchSpec
from modelsurgeon.errors import PlanError, ShapeError
from modelsurgeon.grow.sources import Source
from modelsurgeon.io.reader import Checkpoint
from modelsurgeon.io.st_format import DTYPE_SIZES
from modelsurgeon.io.writer import OutTensor
from modelsurgeon.ops.layermap import LayerMap
from modelsurgeon.ops.moe import ExpertGrowth, moe_tensors

if TYPE_CHECKING:  # tensor transforms import torch; byte copies never need it
    import torch

    from modelsurgeon.ops.width import Transform, WidthPlan


@dataclass(frozen=True)
class Job:
    """One output tensor to make from one source tensor (of `ckpt`: None is MODEL)."""

    src: str
    out: str
    role: str | None
    folds: tuple[tuple[str, float], ...] = ()
    ckpt: Checkpoint | None = None


def _module(suffix: str) -> str:
    return suffix.rsplit(".", 1)[0]


def _global_name(spec: ArchSpec, role: str) -> str | None:
    return next((f"{m}.weight" for m, r in spec.globals.items() if r == role), None)


def layer_jobs(spec: ArchSpec, sources: list[Source], layer_map: LayerMap) -> list[Job]:
    jobs = []
    for j, e in enumerate(layer_map):
        src = sources[e.model].layout.layers[e.source]
        branch = spec.branch_tensors(set(src)) if e.scale != 1.0 else {}
        ckpt = sources[e.model].ckpt if e.model else None
        for suffix, name in src.items():
            folds = ((branch[suffix][1], e.scale),) if suffix in branch else ()
            jobs.append(Job(name, spec.layer_tensor(j, suffix), spec.role_of(suffix), folds, ckpt))
    return jobs


def global_jobs(
    sources: list[Source], spec: ArchSpec, width: WidthPlan | None, taken: dict[str, int] | None = None
) -> tuple[list[Job], bool]:
    """Non-layer tensors (each from the source `taken` names, MODEL by default), with the
    tied-embedding rule under width growth; returns (jobs, untied)."""
    ckpt, layout, taken = sources[0].ckpt, sources[0].layout, taken or {}
    embed, lm_head = _global_name(spec, "embed"), _global_name(spec, "lm_head")
    tied = lm_head is not None and lm_head not in ckpt.tensors
    a, c = (1.0, 1.0)
    if width is not None:
        # lazy: modelsurgeon.ops.width imports torch/transformers
        from modelsurgeon.ops.width import tied_compensation

        a, c = tied_compensation(width, spec)
    uniform = width is None or width.dst.hidden % width.src.hidden == 0
    jobs = []
    for name in layout.others:
        role = spec.global_role(name)
        folds: tuple = ()
        if name == embed and a != 1.0:
            folds = (("multiply", a),)
        elif tied and uniform and role == "final_norm" and c != 1.0:
            folds = ((spec.norm_fold, c),)
        k = taken.get(name, 0)
        jobs.append(Job(name, name, role, folds, sources[k].ckpt if k else None))
    untie = tied and not uniform
    if untie:  # an uneven tiling cannot be compensated by one scalar: write a real lm_head
        k = taken.get(embed, 0)
        jobs.append(Job(embed, lm_head, "lm_head", (), sources[k].ckpt if k else None))
    return jobs, untie


def _transform(job: Job, spec: ArchSpec, width: WidthPlan) -> Transform | None:
    # lazy: modelsurgeon.ops.width imports torch/transformers
    from modelsurgeon.ops.width import Transform, transform_for

    out_map, in_map, split, transposed = transform_for(job.role, job.out.endswith(".bias"), width, spec)
    out_map = None if out_map is not None and out_map.is_identity else out_map
    in_map = None if in_map is not None and in_map.is_identity else in_map
    if out_map is None and in_map is None and not job.folds:
        return None
    return Transform(out_map, in_map, split, transposed, job.folds, width.noise, job.out)


def _check_source_shape(job: Job, t: Transform, shape: tuple[int, ...]) -> None:
    """The source tensor must have the sizes the config and table imply, or the maps are wrong."""
    dims = [(t.out_map, 1 if t.transposed else 0), (t.in_map, 0 if t.transposed else 1)]
    for m, dim in dims:
        if m is not None and (dim >= len(shape) or int(m.idx.max()) + 1 != shape[dim]):
            raise ShapeError(
                f"tensor '{job.src}' has shape {list(shape)}, but its role '{job.role}' and config.json imply "
                f"{int(m.idx.max()) + 1} along dim {dim}",
                hint="config.json and the weights disagree, or the family table is wrong for this model",
            )


def _load(ckpt: Checkpoint, name: str, a: int | None, b: int | None) -> torch.Tensor:
    return ckpt.load(name, None if a is None else (a, b))


def _folded(ckpt: Checkpoint, job: Job) -> OutTensor:
    """A depth-growth tensor: the source with its branch scale folded in, same shape and dtype."""
    # lazy: modelsurgeon.io.dtypes imports torch/transformers
    from modelsurgeon.io.dtypes import ST_TO_TORCH

    # lazy: modelsurgeon.ops.fold imports torch/transformers
    from modelsurgeon.ops.fold import folded_rows

    info = ckpt.tensors[job.src]
    is_bias = job.out.endswith(".bias")
    compute = partial(folded_rows, job.folds, partial(_load, ckpt, job.src), is_bias, ST_TO_TORCH[info.dtype])
    return OutTensor(job.out, info.dtype, info.shape, info.nbytes, compute=compute)


def make_tensor(main: Checkpoint, spec: ArchSpec, width: WidthPlan | None, job: Job) -> OutTensor:
    ckpt = job.ckpt or main
    info = ckpt.tensors[job.src]
    if width is None and job.folds:
        return _folded(ckpt, job)
    t = _transform(job, spec, width) if width is not None else None
    if t is None:
        return OutTensor(job.out, info.dtype, info.shape, info.nbytes, source=info)
    # lazy: modelsurgeon.io.dtypes imports torch/transformers
    from modelsurgeon.io.dtypes import ST_TO_TORCH

    # lazy: modelsurgeon.ops.width imports torch/transformers
    from modelsurgeon.ops.width import compute_rows

    _check_source_shape(job, t, info.shape)
    shape = t.shape(info.shape)
    nbytes = DTYPE_SIZES[info.dtype] * math.prod(shape)
    load = partial(_load, ckpt, job.src)
    compute = partial(compute_rows, t, load, job.out.endswith(".bias"), ST_TO_TORCH[info.dtype])
    if t.transposed:  # computed whole: cache it across the writer's row blocks
        compute = _cached(compute, shape[0])
    return OutTensor(job.out, info.dtype, shape, nbytes, compute=compute)


def _cached(compute, rows: int):
    full: list[torch.Tensor] = []

    def rows_of(a: int, b: int) -> torch.Tensor:
        if not full:
            full.append(compute(0, rows))
        return full[0][a:b]

    return rows_of


def unknown_roles(jobs: list[Job], width: WidthPlan | None, origin: str, spec: ArchSpec) -> None:
    if width is None:
        return
    unknown = sorted({j.src for j in jobs if j.role is None})
    if unknown:
        raise PlanError(
            origin,
            [f"widen: the {spec.model_type} table has no role for tensor(s) {unknown[:6]}, so they cannot be widened"],
            hint="add the module to the family's table in modelsurgeon/arch/specs/",
        )


def output_tensors(
    sources: list[Source],
    spec: ArchSpec,
    layer_map: LayerMap,
    width: WidthPlan | None,
    origin: str,
    moe: ExpertGrowth | None = None,
    taken: dict[str, int] | None = None,
) -> tuple[list[OutTensor], bool]:
    """Non-layer tensors first, then each output layer; returns (tensors, untied). `sources`
    holds MODEL first, then a splice's other models, which `layer_map` and `taken` index."""
    ckpt = sources[0].ckpt
    g_jobs, untied = global_jobs(sources, spec, width, taken)
    jobs = g_jobs + layer_jobs(spec, sources, layer_map)
    unknown_roles(jobs, width, origin, spec)
    if moe is not None:  # sparse layers' FFNs become (more) experts
        return moe_tensors(ckpt, moe, jobs, partial(make_tensor, ckpt, spec, width)), untied
    return [make_tensor(ckpt, spec, width, j) for j in jobs], untied
