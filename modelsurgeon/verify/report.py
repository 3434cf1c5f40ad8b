"""The verification report: the numbers, the checks with their bounds, a rich rendering for
people, a dict for --json, and the VerifyError that makes `surgeon verify` a CI gate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from rich.console import Group
from rich.table import Table

from modelsurgeon.errors import VerifyError


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    value: str
    bound: str
    gating: bool = True  # False: reported, never fails the verification
    detail: str = ""  # where it failed, or what to look at


@dataclass
class VerifyReport:
    source: str
    grown: str
    equivalence: str
    origin: str  # where the class came from: surgeon.json or --expect
    engine: str
    dtype: str
    device: str
    layerwise: bool
    prompts: int
    prompt_tokens: int
    max_new_tokens: int
    strict: bool = False  # --strict: load warnings and approx drift bounds gate too
    metrics: dict = field(default_factory=dict)  # logits, greedy, perplexity, layer drift
    timings: dict = field(default_factory=dict)  # seconds
    vllm: dict | None = None
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.gating)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.gating and not c.passed]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def drift_line(self) -> str:
        """The logit comparison and the verdict in one line (what `grow --dry-run --drift` prints)."""
        lg = self.metrics["logits"]
        verdict = "pass" if self.passed else "FAIL (" + ", ".join(c.name for c in self.failures) + ")"
        return (
            f"max |dlogit| {lg['max_abs']:.3g}, KL {lg['mean_kl']:.4g} nats/token, top-1 {lg['top1']:.3f} "
            f"over {lg['positions']} positions; {self.equivalence} checks: {verdict}"
        )

    def raise_if_failed(self) -> None:
        """Raises VerifyError naming every failed check and where it failed."""
        if self.passed:
            return
        lines = "\n".join(
            f"  - {c.name}: {c.value} (expected {c.bound}){'; ' + c.detail if c.detail else ''}" for c in self.failures
        )
        diagnosis = [c.detail for c in self.checks if c.name == "hidden-state drift" and c.detail]
        lines += "".join(f"\n  diagnosis: {d}" for d in diagnosis)
        raise VerifyError(
            f"{self.grown} fails {len(self.failures)} {self.equivalence} check(s) against {self.source}:\n{lines}",
            hint=_hint(self),
        )


def _hint(report: VerifyReport) -> str:
    names = {c.name for c in report.failures}
    if "config lists follow the layer map" in names:
        return "re-grow with this version of modelsurgeon, or remap the listed config.json entries by hand"
    if any(n.startswith("vLLM") for n in names):
        return "see the vLLM log lines above; a weight vLLM did not load means a name or shape it does not expect"
    if "transformers load warnings" in names:
        return "the checkpoint's tensors and config.json disagree; drop --strict to see the other checks"
    if report.equivalence == "exact":
        return "the first diverging layer is the place to look: its tensors or its config entries were changed"
    return "pass --expect none to only report, or check the plan's equivalence class"


def _summary_rows(report: VerifyReport) -> list[tuple[str, str]]:
    m = report.metrics
    rows = [
        ("class", f"{report.equivalence} (from {report.origin})"),
        ("run", f"{report.engine}, {report.dtype}, {report.device}{', layer at a time' if report.layerwise else ''}"),
        ("prompts", f"{report.prompts} ({report.prompt_tokens} tokens), {report.max_new_tokens} greedy tokens each"),
    ]
    if "logits" in m:
        lg, g, p = m["logits"], m["greedy"], m["perplexity"]
        rows += [
            (
                "max / mean |dlogit|",
                f"{lg['max_abs']:.3g} / {lg['mean_abs']:.3g} (logits up to {lg['logit_scale']:.3g})",
            ),
            ("KL(source || grown)", f"{lg['mean_kl']:.4g} nats/token"),
            ("top-1 agreement", f"{lg['top1']:.4f} over {lg['positions']} positions"),
            (
                "greedy agreement",
                f"{g['agreement']:.3f} ({g['identical']}/{g['prompts']} identical, first divergence "
                f"{g['first_divergence']})",
            ),
            ("perplexity", f"{p['source']:.4g} -> {p['grown']:.4g}"),
        ]
    if m.get("layer_drift"):
        worst = max(m["layer_drift"], key=lambda d: d["rel_error"])
        where = f" at grown layer {worst['grown_layer']}" if worst["rel_error"] > 0 else ""
        rows.append(
            (
                "layer drift",
                f"max {worst['rel_error']:.2e}{where} over {len(m['layer_drift'])} aligned layer outputs (relative)",
            )
        )
    v = report.vllm
    if v:
        agree = ", ".join(f"{k.split('_vs_')[1]} {v[k]:.3f}" for k in v if k.startswith("agreement_vs_"))
        rows.append(
            (
                "vLLM",
                f"{v['version']}: load {v['load_s']:.1f}s, {v['tokens_per_s']:.1f} tokens/s, agreement {agree}"
                if v["ok"]
                else f"failed: {v['error']}",
            )
        )
    rows.append(("time", ", ".join(f"{k} {t:.1f}s" for k, t in report.timings.items())))
    rows += [("note", n) for n in report.notes]
    return rows


def render(report: VerifyReport) -> Group:
    """Two tables: what was measured, and the checks with their bounds."""
    head = Table(title=f"surgeon verify: {report.grown} vs {report.source}", show_header=False)
    head.add_column(style="bold")
    head.add_column()
    for key, value in _summary_rows(report):
        head.add_row(key, value)
    checks = Table(title=f"checks: {'[green]PASS[/]' if report.passed else '[red]FAIL[/]'}")
    for col in ("check", "result", "value", "bound", "detail"):
        checks.add_column(col)
    for c in report.checks:
        status = "[green]pass[/]" if c.passed else ("[red]FAIL[/]" if c.gating else "[yellow]differs[/]")
        checks.add_row(c.name, status, c.value, c.bound, c.detail)
    return Group(head, checks)
