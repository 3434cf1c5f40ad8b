"""verify_checkpoint(): run SOURCE and GROWN on the same prompts (transformers, and vLLM on
request) and check what GROWN's equivalence class promises."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from modelsurgeon.arch.layer_keys import layer_key_findings
from modelsurgeon.errors import VerifyError
from modelsurgeon.io.dtype_rules import alias_help, canonical_dtype
from modelsurgeon.verify.checks import (
    BOUNDS,
    approx_checks,
    exact_checks,
    finite_check,
    layer_key_check,
    load_check,
    program_check,
    structure_check,
)
from modelsurgeon.verify.claims import Claims, Structure, compare_dtype, read_claims, read_structure, structure_problems
from modelsurgeon.verify.compare import alignment, greedy_stats, layer_drift, logit_stats, logprob_delta, perplexity
from modelsurgeon.verify.experts import expert_problems
from modelsurgeon.verify.program import can_run, run_program
from modelsurgeon.verify.prompts import DEFAULT_PROMPTS, MIN_TOKENS, read_prompts, tokenize
from modelsurgeon.verify.report import Check, VerifyReport, render
from modelsurgeon.verify.runner import DTYPES, ModelRun, pick_device, run_full
from modelsurgeon.verify.vision import vision_check
from modelsurgeon.verify.vllm_engine import find_vllm_python, run_vllm

if TYPE_CHECKING:
    from rich.console import Console

ENGINES = ("torch", "vllm", "both")
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")
DEFAULT_POSITIONS = 2048  # when config.json names no limit


def _positions(s: Structure) -> int:
    return next((int(s.config[k]) for k in POSITION_KEYS if isinstance(s.config.get(k), int)), DEFAULT_POSITIONS)


def _prompt_texts(prompts: str | Path | Sequence[str] | None) -> list[str]:
    if prompts is None:
        return list(DEFAULT_PROMPTS)
    if isinstance(prompts, (str, Path)):
        return read_prompts(prompts)
    return list(prompts)


def _validate(engine: str, dtype: str, max_new_tokens: int) -> None:
    if engine not in ENGINES:
        raise VerifyError(f"unknown engine {engine!r}", hint=f"use one of {', '.join(ENGINES)}")
    if dtype is not None and dtype not in DTYPES:
        raise VerifyError(f"unsupported dtype {dtype!r}", hint=f"use one of {alias_help(DTYPES)}")
    if max_new_tokens < 1:
        raise VerifyError(f"max_new_tokens must be at least 1, got {max_new_tokens}")


def _mappable(claims: Claims, src: Structure, out: Structure) -> bool:
    m = claims.layer_map
    return bool(m) and len(m) == out.num_layers and all(0 <= s < src.num_layers for s, _ in m)


def _diagnosis_map(claims: Claims, src: Structure, out: Structure, notes: list[str]) -> list[tuple[int, float]] | None:
    """The layer map that aligns hidden states and drives the program check, or None."""
    if not _mappable(claims, src, out):
        return None
    key = src.spec.config_keys.hidden
    a, b = src.config.get(key), out.config.get(key)
    if isinstance(a, int) and isinstance(b, int) and b % a:
        # Uneven replication (bert2BERT) gives norms other statistics: approximate by design, and
        # no fold reads GROWN's stream back at SOURCE's width, so only the logits can be compared.
        notes.append(f"{key} {a} -> {b} is not a multiple (uneven replication): hidden states cannot be aligned")
        return None
    return claims.layer_map


def _torch_checks(
    report: VerifyReport,
    runs: dict[str, ModelRun],
    claims: Claims,
    src: Structure,
    layer_map: list[tuple[int, float]] | None,
    ids: list[list[int]],
) -> None:
    b = BOUNDS[report.dtype]
    s_run, g_run = runs["source"], runs["grown"]
    scale = max(float(x.abs().max()) for x in s_run.logits)
    tol = b.logit_tol(scale)
    stats = logit_stats(s_run.logits, g_run.logits, tol)
    greedy = greedy_stats(s_run.greedy, g_run.greedy, s_run.greedy_logits, tol)
    ppl = (perplexity(s_run.logits, ids), perplexity(g_run.logits, ids))
    drift = layer_drift(s_run.hidden, g_run.hidden, alignment(layer_map, src.num_layers)) if layer_map else []
    if not layer_map:
        report.notes.append("no usable layer map: per-layer hidden-state diagnosis skipped")
    report.metrics.update(
        logits=dataclasses.asdict(stats),
        greedy=dataclasses.asdict(greedy),
        perplexity={"source": ppl[0], "grown": ppl[1]},
        layer_drift=[dataclasses.asdict(d) for d in drift],
    )
    if claims.equivalence == "exact":
        report.checks += exact_checks(b, stats, greedy, drift, layer_map)
    else:
        report.checks += approx_checks(
            b, stats, greedy, ppl, drift, layer_map, gating=claims.equivalence == "approx" and report.strict
        )
    _program_check(report, s_run, g_run, layer_map, tol)


def _program_check(report: VerifyReport, s_run: ModelRun, g_run: ModelRun, layer_map, tol: float) -> None:
    """GROWN against the layer map run on SOURCE's modules: tight for every class."""
    result = s_run.extra
    if layer_map is None or result is None:
        report.notes.append("layer-map program check skipped (needs a layer map and whole-model mode)")
        return
    if isinstance(result, str):
        report.notes.append(f"layer-map program check skipped: {result}")
        return
    b = BOUNDS[report.dtype]
    logits, hidden = result
    stats = logit_stats(logits, g_run.logits, tol)
    drift = layer_drift(hidden, g_run.hidden, [(j, j) for j in range(-1, len(layer_map))])
    report.metrics["program"] = {"max_abs": stats.max_abs, "mean_kl": stats.mean_kl, "top1": stats.top1}
    report.checks.append(program_check(b, stats, drift, layer_map, gating=report.equivalence != "none"))


def _vllm_checks(report: VerifyReport, runs: dict[str, ModelRun], out: Structure, ids, python: str) -> None:

    b = BOUNDS[report.dtype]
    max_len = min(_positions(out), max(len(i) for i in ids) + report.max_new_tokens)
    run = run_vllm(out.ckpt.path, ids, report.max_new_tokens, report.dtype, python, max_len, bool(out.spec.wrapper))
    report.vllm = {k: v for k, v in dataclasses.asdict(run).items() if k not in ("tokens", "prompt_logprobs")}
    report.timings["vllm_subprocess"] = run.wall_s
    loaded = run.ok and not run.weight_warnings
    detail = run.error or "; ".join(run.weight_warnings)
    report.checks.append(
        Check("vLLM loads GROWN", loaded, "yes" if loaded else "no", "every weight loaded", detail=detail)
    )
    if not run.ok:
        return
    refs = [("GROWN", runs["grown"])] + ([("SOURCE", runs["source"])] if report.equivalence == "exact" else [])
    for name, ref in refs:
        scale = max(float(x.abs().max()) for x in ref.logits)
        g = greedy_stats(ref.greedy, run.tokens, ref.greedy_logits, b.engine_tol(scale))
        delta, where = logprob_delta(ref.logits, ids, run.prompt_logprobs)
        key = name.lower()
        report.vllm.update(
            {
                f"agreement_vs_{key}": g.agreement,
                f"first_divergence_vs_{key}": g.first_divergence,
                f"max_logprob_delta_vs_{key}": delta,
            }
        )
        diverged = next(
            (f"prompt {p} diverges at token {d}" for p, d in enumerate(g.first_divergence) if d is not None), ""
        )
        report.checks += [
            Check(
                f"vLLM greedy = transformers greedy on {name}",
                all(g.tie_at_divergence),
                f"{g.identical}/{g.prompts} identical",
                "identical (near-ties excepted)",
                detail=diverged,
            ),
            Check(
                f"vLLM prompt log-probs = transformers on {name}",
                delta <= b.engine_logprob,
                f"{delta:.2e}",
                f"<= {b.engine_logprob:g}",
                detail=f"largest at prompt {where[0]}, position {where[1]}" if delta > b.engine_logprob else "",
            ),
        ]


def _program(src: Structure, layer_map, ids, dev: torch.device):
    """What run_full does with SOURCE's model once its own prompts ran: the layer-map program's
    outputs, or the reason it cannot run."""

    def run(model):

        return can_run(src, model) or run_program(model, src, layer_map, ids, dev)

    return run


def _run_models(
    report: VerifyReport, src: Structure, out: Structure, ids, dev: torch.device, problems: list[str], layer_map
) -> dict[str, ModelRun]:
    """One model in memory at a time (or one layer, with layerwise)."""
    runs: dict[str, ModelRun] = {}
    dtype = DTYPES[report.dtype]
    if report.layerwise:
        from modelsurgeon.verify.layerwise import run_layerwise as run
    else:
        run = run_full
    if report.engine != "vllm" or report.equivalence == "exact":  # vLLM alone needs SOURCE only for exact
        if report.layerwise or report.engine == "vllm" or not layer_map:
            runs["source"] = run(src.ckpt.path, src, ids, report.max_new_tokens, dtype, dev)
        else:
            runs["source"] = run_full(
                src.ckpt.path, src, ids, report.max_new_tokens, dtype, dev, also=_program(src, layer_map, ids, dev)
            )
    runs["grown"] = run(out.ckpt.path, out, ids, report.max_new_tokens, DTYPES[report.dtype], dev, problems)
    for name, r in runs.items():
        report.timings.update({f"{name}_load": r.load_s, f"{name}_run": r.run_s})
    return runs


def _prompt_ids(src: Structure, out: Structure, prompts, max_new_tokens: int) -> list[list[int]]:
    """The prompts tokenized, each cut to leave room for `max_new_tokens` in both models' positions."""
    max_prompt = min(_positions(src), _positions(out)) - max_new_tokens
    if max_prompt < MIN_TOKENS:
        raise VerifyError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {max_prompt + max_new_tokens} positions"
        )
    return tokenize(src.ckpt.path, out.ckpt.path, _prompt_texts(prompts), max_prompt)


def _static_checks(
    report: VerifyReport, src: Structure, out: Structure, claims: Claims, problems: list[str], experts: list[str]
) -> None:
    """What GROWN's files promise whatever its outputs: shapes, layer keys, experts, vision side."""
    gating = claims.equivalence != "none"
    report.checks.append(structure_check(problems, gating=gating))
    report.checks.append(layer_key_check(layer_key_findings(out.config, out.spec, out.config_name), gating=gating))
    if out.spec.moe is not None and claims.equivalence == "exact":
        report.checks.append(
            Check(
                "experts and router rows copied",
                not experts,
                "yes" if not experts else "no",
                "every expert its source's",
                True,
                "; ".join(experts),
            )
        )
    if out.spec.wrapper and src.spec.wrapper:  # text-only prompts never run the vision side
        report.checks.append(vision_check(src, out, gating=gating))


def _run_and_check(
    report: VerifyReport,
    src: Structure,
    out: Structure,
    claims: Claims,
    problems: list[str],
    experts: list[str],
    ids: list[list[int]],
    dev: torch.device,
    vllm_python: str | Path | None,  # found already when an engine needs vLLM
) -> None:
    """Run the models and append every check, static ones first, then the run's, then each engine's."""
    layer_map = _diagnosis_map(claims, src, out, report.notes)
    runs = _run_models(report, src, out, ids, dev, problems, layer_map)
    _static_checks(report, src, out, claims, problems, experts)
    report.checks.append(load_check({n: r.load_warnings for n, r in runs.items()}, report.strict))
    report.checks.append(
        finite_check({n: all(bool(torch.isfinite(x).all()) for x in r.logits) for n, r in runs.items()})
    )
    if report.engine != "vllm":
        _torch_checks(report, runs, claims, src, layer_map, ids)
    if report.engine != "torch":
        _vllm_checks(report, runs, out, ids, vllm_python)


def verify_checkpoint(
    source: str | Path,
    grown: str | Path,
    *,
    engine: str = "torch",
    prompts: str | Path | Sequence[str] | None = None,
    max_new_tokens: int = 16,
    dtype: str | None = None,
    expect: str | None = None,
    strict: bool = False,
    layerwise: bool = False,
    vllm_python: str | Path | None = None,
    device: str | None = None,
) -> VerifyReport:
    """Compare GROWN with SOURCE and check GROWN's equivalence class (from its surgeon.json, or
    `expect`). `dtype` None compares at GROWN's weight dtype. Returns the report whether or not
    the checks pass: call `raise_if_failed()`.

    Raises:
        VerifyError: bad arguments, no class to check, a model that does not load, or no vLLM.
        CheckpointError: a directory that is not a readable checkpoint.
    """
    dtype = canonical_dtype(dtype) if dtype is not None else None  # bf16, fp32
    _validate(engine, dtype, max_new_tokens)
    start = time.perf_counter()
    if engine != "torch":  # before minutes of transformers work, not after
        vllm_python = find_vllm_python(vllm_python)
    src, out = read_structure(Path(source)), read_structure(Path(grown))
    claims = read_claims(src, out, expect)
    dtype = dtype or compare_dtype(src, out, claims.notes)
    problems = structure_problems(src, out, claims.layer_map)
    experts = expert_problems(src, out, claims.layer_map, claims.equivalence)
    ids = _prompt_ids(src, out, prompts, max_new_tokens)
    dev = pick_device(device)
    report = VerifyReport(
        str(source),
        str(grown),
        claims.equivalence,
        claims.origin,
        engine,
        dtype,
        str(dev),
        layerwise,
        len(ids),
        sum(map(len, ids)),
        max_new_tokens,
        strict,
        notes=list(claims.notes),
    )
    _run_and_check(report, src, out, claims, problems, experts, ids, dev, vllm_python)
    report.timings["total"] = time.perf_counter() - start
    return report


def verify_and_show(source: str | Path, grown: str | Path, console: Console) -> VerifyReport:
    """What `grow --verify` and `demo` run on an output they wrote: verify_checkpoint with its
    defaults, the report printed, then its VerifyError raised when a check fails."""
    report = verify_checkpoint(source, grown)
    console.print(render(report))
    report.raise_if_failed()
    return report
