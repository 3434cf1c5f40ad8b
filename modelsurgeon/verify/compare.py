"""Numbers that compare two models' runs on the same prompts: logit deltas, KL, top-1 and
greedy agreement, perplexity, and per-layer hidden-state drift aligned through the layer map."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitStats:
    max_abs: float  # max |logit difference| over positions and vocabulary
    mean_abs: float
    mean_kl: float  # KL(source || grown), nats per position
    top1: float  # fraction of positions whose argmax agrees
    top1_ties: int  # disagreements where the source's top two are within the tie margin
    positions: int
    logit_scale: float  # max |source logit|: the scale the tolerances are relative to
    first_diff: tuple[int, int] | None  # (prompt, position) of the first |delta| above the tolerance


def logit_stats(src: list[torch.Tensor], out: list[torch.Tensor], tol: float) -> LogitStats:
    a, b = torch.cat(src), torch.cat(out)
    logp, logq = a.log_softmax(-1), b.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    pa, pb = a.argmax(-1), b.argmax(-1)
    differ = pa != pb
    # A disagreement where the source itself barely prefers its token is float noise, not a bug.
    margin = a.gather(-1, pa[:, None]) - a.gather(-1, pb[:, None])
    ties = int((differ & (margin[:, 0] <= tol)).sum())
    return LogitStats(
        max_abs=(a - b).abs().max().item(),
        mean_abs=(a - b).abs().mean().item(),
        mean_kl=kl.mean().item(),
        top1=1.0 - differ.float().mean().item(),
        top1_ties=ties,
        positions=a.shape[0],
        logit_scale=a.abs().max().item(),
        first_diff=_first_diff(src, out, tol),
    )


def _first_diff(src: list[torch.Tensor], out: list[torch.Tensor], tol: float) -> tuple[int, int] | None:
    for p, (a, b) in enumerate(zip(src, out)):
        over = ((a - b).abs().amax(-1) > tol).nonzero()
        if len(over):
            return p, int(over[0])
    return None


def perplexity(logits: list[torch.Tensor], prompts: list[list[int]]) -> float:
    """exp(mean next-token NLL) over every predicted prompt position."""
    nll, n = 0.0, 0
    for x, ids in zip(logits, prompts):
        target = torch.tensor(ids[1:])
        nll += torch.nn.functional.cross_entropy(x[:-1], target, reduction="sum").item()
        n += len(target)
    return math.exp(nll / n)


def logprob_delta(
    logits: list[torch.Tensor], prompts: list[list[int]], other: list[list[float | None]]
) -> tuple[float, tuple[int, int] | None]:
    """Max |log p(token i | prefix)| difference between our logits and another engine's
    prompt log-probs, and the (prompt, position) where it is largest."""
    worst, where = 0.0, None
    for p, (x, ids, lp) in enumerate(zip(logits, prompts, other)):
        ours = x[:-1].log_softmax(-1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        given = [v if v is not None else float("nan") for v in lp[1 : len(ids)]]
        theirs = torch.tensor(
            given + [float("nan")] * (len(ids) - 1 - len(given)), dtype=torch.float32
        )  # unscored: inf
        delta = (ours - theirs).abs().nan_to_num(float("inf"))
        i = int(delta.argmax())
        if float(delta[i]) > worst or where is None:
            worst, where = float(delta[i]), (p, i + 1)
    return worst, where


@dataclass(frozen=True)
class GreedyStats:
    agreement: float  # mean over prompts of (tokens before the first divergence) / N
    identical: int  # prompts whose N tokens are all the same
    prompts: int
    first_divergence: list[int | None]  # per prompt: index of the first differing token
    tie_at_divergence: list[bool]  # per diverging prompt: was it a near-tie under the reference?


def greedy_stats(ref: list[list[int]], other: list[list[int]], ref_rows: list[torch.Tensor], tol: float) -> GreedyStats:
    """Compare greedy continuations; `ref_rows` are the reference's logits at each greedy
    step, so a divergence can be classed as a near-tie (both tokens within `tol` logits)."""
    firsts, ties, total = [], [], 0.0
    for a, b, rows in zip(ref, other, ref_rows):
        d = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if d is None and len(a) != len(b):
            d = min(len(a), len(b))
        firsts.append(d)
        n = max(len(a), 1)
        total += (n if d is None else d) / n
        if d is not None:
            ties.append(d < len(b) and d < len(rows) and float(rows[d, a[d]] - rows[d, b[d]]) <= tol)
    return GreedyStats(total / max(len(ref), 1), sum(d is None for d in firsts), len(ref), firsts, ties)


@dataclass(frozen=True)
class LayerDrift:
    grown_layer: int  # -1: the embeddings (input of layer 0)
    source_layer: int  # -1: the embeddings
    rel_error: float  # ||h_grown - h_source|| / ||h_source|| over all prompt positions


def alignment(layer_map: list[tuple[int, float]], n_source: int) -> list[tuple[int, int]]:
    """(grown layer, source layer) pairs after which both residual streams should agree: the
    grown model has by then applied every source layer 0..i with branch scales summing to 1
    and nothing else. For exact maps that is every grown layer (scale-0 layers are identities);
    for approx maps (x + F/2 + F/2) the end of each group of copies."""
    pairs = [(-1, -1)]
    totals = [0.0] * n_source
    for j, (s, scale) in enumerate(layer_map):
        totals[s] += scale
        done = 0
        while done < n_source and math.isclose(totals[done], 1.0, abs_tol=1e-9):
            done += 1
        rest = totals[done:]
        if all(abs(t) < 1e-12 for t in rest):
            pairs.append((j, done - 1))
    return pairs


def fold_width(h: torch.Tensor, width: int) -> torch.Tensor:
    """A stream widened n-fold by tiling ([x, x, ...], how `op: widen` grows hidden) read back
    at the source width as the mean of its n copies."""
    n, rest = divmod(h.shape[-1], width)
    if n == 1 or rest:
        return h
    return h.reshape(*h.shape[:-1], n, width).mean(-2)


def layer_drift(
    src: list[list[torch.Tensor]], out: list[list[torch.Tensor]], pairs: list[tuple[int, int]]
) -> list[LayerDrift]:
    """Relative error of the grown stream against the source stream at each aligned pair.
    hidden[p][k+1] is the output of layer k, hidden[p][0] the embeddings."""
    drift = []
    for j, i in pairs:
        num = sum(float((fold_width(o[j + 1], s[i + 1].shape[-1]) - s[i + 1]).pow(2).sum()) for s, o in zip(src, out))
        den = sum(float(s[i + 1].pow(2).sum()) for s in src)
        drift.append(LayerDrift(j, i, math.sqrt(num / den) if den > 0 else math.sqrt(num)))
    return drift
