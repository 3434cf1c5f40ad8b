"""Grow a real pretrained model with every shipped plan and measure how far each moves its
outputs (max |delta logit|, KL(source || grown), next-token agreement) on verify's built-in
prompts: the numbers `surgeon grow --dry-run --drift` and `surgeon verify` report.

    python scripts/smollm2_to_safetensors.py          # once: SmolLM2-135M-Instruct as safetensors
    python scripts/real_model_drift.py [--model DIR] [--plans plans/*.yaml]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from modelsurgeon.plan import load_plan
from modelsurgeon.verify.drift import measure_drift

DEFAULT_MODEL = Path.home() / ".cache" / "modelsurgeon" / "smollm2-135m"
PLANS = sorted((Path(__file__).resolve().parent.parent / "plans").glob("*.yaml"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--plans", type=Path, nargs="*", default=PLANS)
    args = ap.parse_args()
    print("| plan | class | max abs dlogit | KL (nats/token) | top-1 agreement | grow + verify (s) |")
    print("|---|---|---|---|---|---|")
    for path in args.plans:
        loaded = load_plan(path)
        start = time.perf_counter()
        prep, report = measure_drift(args.model, loaded)
        lg = report.metrics["logits"]
        shape = f"{prep.layout.num_layers} -> {len(prep.layer_map)} layers, {prep.params_out / 1e6:.0f}M params"
        print(
            f"| {path.stem} ({shape}) "
            f"| {prep.equivalence} | {lg['max_abs']:.3g} | {lg['mean_kl']:.3f} | {lg['top1']:.3f} "
            f"| {time.perf_counter() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
