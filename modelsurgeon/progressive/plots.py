"""The report's figures (matplotlib, PNG): loss against cumulative training FLOPs with growth
events marked, accuracy by chain length, parameters over the run, per-layer gradient norms.
Each takes `curves` from report.py: per run, the points already placed on the FLOP axis."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _growth_lines(ax, growths: list[float]) -> None:
    for i, x in enumerate(growths):
        ax.axvline(x, color="grey", ls="--", lw=1, label="growth" if i == 0 else None)


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    _label(ax, xlabel, ylabel, title)
    fig.tight_layout()
    fig.savefig(path)


def loss_vs_flops(curves: dict[str, dict], growths: list[float], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name, c in curves.items():
        line = ax.plot(c["train_x"], c["train_loss"], lw=1.1, label=f"{name} train")[0]
        if c["eval_x"]:
            ax.plot(c["eval_x"], c["eval_loss"], "o", ms=4, color=line.get_color(), label=f"{name} eval")
    _growth_lines(ax, growths)
    ax.set_yscale("log")
    _save(fig, ax, path, "cumulative training FLOPs", "loss (nats/token, log scale)", "Loss vs compute")
    plt.close(fig)


def accuracy_by_k(runs: dict[str, dict], train_max_k: int | None, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, acc in runs.items():
        if acc:
            ks = sorted(int(k) for k in acc)
            ax.plot(ks, [acc[str(k)]["accuracy"] for k in ks], "o-", label=name)
    if train_max_k is not None:
        ax.axvspan(
            train_max_k + 0.5,
            max(ax.get_xlim()[1], train_max_k + 1),
            color="orange",
            alpha=0.12,
            label=f"longer than training (k > {train_max_k})",
        )
    ax.set_ylim(-0.02, 1.02)
    _save(fig, ax, path, "chain length k", "exact-match accuracy", "Accuracy by chain length (final models)")
    plt.close(fig)


def params_over_time(steps: list[dict], baselines: dict[str, dict], path: Path) -> None:
    """Step plot of total and trainable parameters against cumulative FLOPs."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    xs, total, trainable = [], [], []
    for s in steps:
        if s["kind"] == "train":
            xs += [s["cum_flops"] - s["flops"], s["cum_flops"]]
            total += [s["params"]] * 2
            trainable += [s["trainable"]] * 2
    ax.plot(xs, total, lw=2, label="progressive: parameters")
    ax.plot(xs, trainable, lw=1.5, ls=":", label="progressive: trainable")
    for name, b in baselines.items():
        ax.plot([0, b["flops"]], [b["params"]] * 2, lw=1.2, label=f"{name}: parameters (all trainable)")
    _growth_lines(ax, [s["cum_flops"] for s in steps if s["kind"] == "grow"])
    ax.set_yscale("log")
    _save(fig, ax, path, "cumulative training FLOPs", "parameters (log scale)", "Parameters over the run")
    plt.close(fig)


def grad_norms(runs: dict[str, list[dict]], growth_steps: list[int], path: Path) -> None:
    """One panel per run: each decoder layer's gradient norm against the run's global step,
    coloured from the first layer (dark) to the last (yellow)."""
    plt = _plt()
    names = [n for n, rows in runs.items() if rows]
    fig, axes = plt.subplots(len(names) or 1, 1, figsize=(8, 3.2 * max(len(names), 1)), dpi=110, squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        rows = runs[name]
        n = max(len(r["norms"]) for r in rows)
        cmap = plt.get_cmap("viridis")
        for layer in range(n):
            pts = [(r["step"], r["norms"][layer]) for r in rows if layer < len(r["norms"]) and r["norms"][layer] > 0]
            if pts:
                ax.plot(
                    *zip(*pts),
                    lw=0.9,
                    color=cmap(layer / max(n - 1, 1)),
                    label=f"layer {layer}" if layer in (0, n - 1) else None,
                )
        if name == "progressive":
            _growth_lines(ax, growth_steps)
        ax.set_yscale("log")
        _label(ax, "optimizer step (whole run)", "grad norm (log)", f"{name}: per-layer gradient norms")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
