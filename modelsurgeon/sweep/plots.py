"""The sweep's figures, each showing the spread over seeds: eval loss against FLOPs (one thin line
per seed, one colour per arm), accuracy by chain length (per-seed points and the mean with its
95% t interval), and FLOPs to the target loss beside wall time (per-seed points, mean and interval)."""

from __future__ import annotations

from pathlib import Path

from modelsurgeon.progressive.plots import _plt


def _colours(names: list[str]) -> dict[str, object]:
    cmap = _plt().get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def loss_vs_flops(manifest, results, target: float | None, path: Path) -> None:
    plt = _plt()
    names = [a.name for a in manifest.arms if any(r.arm == a.name for r in results)]
    colour = _colours(names)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    for name in names:
        for i, r in enumerate(sorted((r for r in results if r.arm == name), key=lambda r: r.seed)):
            if r.curve:
                xs, ys = zip(*r.curve)
                ax.plot(xs, ys, "o-", ms=2.5, lw=0.9, alpha=0.8, color=colour[name], label=name if i == 0 else None)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target loss {target:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("cumulative training FLOPs")
    ax.set_ylabel("eval loss (log scale)")
    ax.set_title("Eval loss vs compute (one line per seed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _errorbar(ax, x: float, stat: dict, colour, label: str | None) -> None:
    est, low, high = stat["estimate"], stat["low"], stat["high"]
    yerr = [[est - low], [high - est]] if low is not None else None
    ax.errorbar([x], [est], yerr=yerr, fmt="s", ms=5, capsize=4, color=colour, label=label)


def accuracy_by_length(arms: dict[str, dict], path: Path) -> None:
    _by_length(arms, "accuracy_by_length", "exact match", path)


def answer_loss_by_length(arms: dict[str, dict], path: Path) -> None:
    _by_length(arms, "answer_loss_by_length", "answer loss (nats/token)", path)


def _by_length(arms: dict[str, dict], field: str, ylabel: str, path: Path) -> None:
    plt = _plt()
    keys = list(dict.fromkeys(k for a in arms.values() for k in a.get(field, {})))
    colour = _colours(list(arms))
    fig, axes = plt.subplots(1, max(len(keys), 1), figsize=(6 * max(len(keys), 1), 4), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for j, (name, a) in enumerate(arms.items()):
            by_len = a.get(field, {}).get(key, {})
            for i, (length, s) in enumerate(sorted(by_len.items(), key=lambda kv: int(kv[0]))):
                x = int(length) + 0.08 * (j - len(arms) / 2)  # arms side by side at each length
                ax.plot([x] * len(s["per_seed"]), s["per_seed"], ".", ms=4, alpha=0.5, color=colour[name])
                _errorbar(ax, x, s, colour[name], name if i == 0 else None)
        if field == "accuracy_by_length":
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("chain length")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{key}: {ylabel} by chain length\n(dots: seeds; bars: 95% t interval)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def flops_to_target(arms: dict[str, dict], path: Path) -> None:
    plt = _plt()
    colour = _colours(list(arms))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    for ax, key, label in (
        (axes[0], "flops_to_target", "FLOPs to the target loss"),
        (axes[1], "wall_s", "wall time (s)"),
    ):
        for x, (name, a) in enumerate(arms.items()):
            values = [v[key] for v in a["per_seed"].values() if v.get(key) is not None]
            ax.plot([x + 0.15] * len(values), values, ".", ms=6, alpha=0.6, color=colour[name])
            if values:
                _errorbar(ax, x, a["t"][key], colour[name], None)
        ax.set_xticks(range(len(arms)), list(arms), rotation=20, ha="right", fontsize=7)
        ax.set_ylabel(label)
        ax.set_title(f"{label} per arm (dots: seeds; bars: 95% t interval)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
