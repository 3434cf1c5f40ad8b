#!/usr/bin/env python3
"""Benchmark `surgeon train-stage` (LoRA) against a minimal hand-written transformers + peft loop.

    python scripts/bench_train.py                      # SmolLM2-135M, seq 256, batch 4, 30 timed steps
    python scripts/bench_train.py --steps 8 --warmup-steps 2 --json

Both runs train the same model on the same packed blocks (synthetic:arith through the data
layer) with the same LoRA config (every linear role, r 16), AdamW (fused, the Trainer's
default), gradient clipping at 1.0 and the same batch and sequence length, in this process, one
after the other. Each records a timestamp after every optimizer step; tokens/s is taken over the
steps after --warmup-steps (start-up, data loading, evaluation and output writing excluded).
The ratio train-stage / hand loop is printed (target >= 0.95); nothing asserts on timings.

Then peak RSS of loading the model grown 2x (every layer duplicated, `interpolate factor 2`)
with transformers' from_pretrained and with --share-duplicates' load_shared, each in a fresh
process that loads and runs one forward pass (the child's own VmHWM, Linux; an import-only
child gives the baseline).
Uses ~/.cache/modelsurgeon/smollm2-135m when present (scripts/smollm2_to_safetensors.py),
else a tiny llama built here (printed).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

SMOLLM = Path.home() / ".cache" / "modelsurgeon" / "smollm2-135m"
DATA = "synthetic:arith:n=4000"
MB = 2**20

RSS_CHILD = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM
mode, path = sys.argv[1], sys.argv[2]
model = None
if mode == "from_pretrained":
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
elif mode == "load_shared":
    from modelsurgeon.train.shared import load_shared
    model, _ = load_shared(path, torch.float32)
held = 0
if model is not None:
    # from_pretrained may leave weights memory-mapped and not yet read: one forward pass reads
    # every weight, as training does, so the resident set is what training would hold.
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))
    storages = {p.untyped_storage().data_ptr(): p.untyped_storage() for p in model.parameters()}
    held = sum(s.nbytes() for s in storages.values())
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forking (benchmark) process.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss": hwm * 1024, "param_bytes_held": held}))
"""


class StepClock(TrainerCallback):
    """Timestamp after every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def rate(times: list[float], warmup: int, tokens_per_step: int) -> float:
    """Tokens/s over the steps after `warmup` (times[i] is the end of step i + 1; the clock
    starts at the end of a step, so at least the first one is untimed)."""
    w = max(warmup, 1)
    return (len(times) - w) * tokens_per_step / (times[-1] - times[w - 1])


def pick_model(work: Path) -> tuple[Path, str]:
    if (SMOLLM / "config.json").is_file():
        return SMOLLM, "SmolLM2-135M (float32)"
    from modelsurgeon.tiny import build_tiny

    print(f"notice: {SMOLLM} not found (run scripts/smollm2_to_safetensors.py); using a tiny llama", file=sys.stderr)
    return build_tiny(
        "llama", work / "tiny", n_layers=8, hidden=256, heads=8, kv_heads=4, vocab=256
    ), "tiny llama (8 layers, hidden 256)"


def options(args, total: int):
    from modelsurgeon.train import make_options

    return make_options(
        method="lora",
        data=[DATA],
        steps=total,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=2e-4,
        warmup=0,
        schedule="constant",
        save_every=0,
        log_every=10,
        lora_r=args.lora_r,
    )


def bench_stage(model: Path, args, work: Path) -> dict:
    """train_stage itself (the CLI's backend), with a step clock added."""
    from modelsurgeon.train import train_stage

    total = args.warmup_steps + args.steps
    clock = StepClock()
    start = time.perf_counter()
    result = train_stage(model, work / "stage-out", options(args, total), force=True, callbacks=(clock,))
    wall = time.perf_counter() - start
    per_step = args.batch_size * args.seq_len
    return {
        "tokens_per_s": rate(clock.times, args.warmup_steps, per_step),
        "wall_s": wall,
        "final_loss": result.final_loss,
        "trainable_params": result.trainable,
    }


def hand_data(model: Path, args, total: int) -> torch.Tensor:
    """The blocks train_stage trains on: same data layer call, same arguments."""
    from transformers import AutoTokenizer

    from modelsurgeon.data import build_blocks, parse_data_spec

    opts = options(args, total)
    packed = build_blocks(
        [parse_data_spec(DATA)],
        AutoTokenizer.from_pretrained(model),
        args.seq_len,
        max_tokens=opts.data_tokens(args.seq_len),
        eval_fraction=opts.eval_fraction,
        seed=opts.seed,
    )
    return packed.train


def bench_hand_loop(model: Path, args) -> dict:
    """The minimal loop a user would write: peft LoRA on the same targets, fused AdamW, clipping."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    from modelsurgeon.arch.registry import layout_of, resolve_spec
    from modelsurgeon.io.reader import open_checkpoint
    from modelsurgeon.train.methods import resolve_targets

    total = args.warmup_steps + args.steps
    blocks = hand_data(model, args, total)
    ckpt = open_checkpoint(model)
    spec = resolve_spec(ckpt.config, ckpt.names)
    targets = resolve_targets(spec, layout_of(spec, ckpt.config, ckpt.names, str(model)), None)
    set_seed(0)
    start = time.perf_counter()
    net = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
        LoraConfig(r=args.lora_r, lora_alpha=32, lora_dropout=0.05, target_modules=targets, task_type="CAUSAL_LM"),
    )
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=True)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(0))
    times, loss = [], None
    for step in range(total):
        idx = order[[(step * args.batch_size + i) % len(blocks) for i in range(args.batch_size)]]
        batch = blocks[idx]
        loss = net(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return {
        "tokens_per_s": rate(times, args.warmup_steps, args.batch_size * args.seq_len),
        "wall_s": time.perf_counter() - start,
        "final_loss": loss.item(),
    }


def run_pairs(model: Path, args, work: Path) -> tuple[dict, dict]:
    """--repeats rounds of both, alternating which goes first (the machine may be shared);
    each side's median round by tokens/s, with every round's rate listed."""
    hands, stages = [], []
    for r in range(args.repeats):
        for job in ("hand", "stage") if r % 2 == 0 else ("stage", "hand"):
            (hands if job == "hand" else stages).append(
                bench_hand_loop(model, args) if job == "hand" else bench_stage(model, args, work)
            )

    def median(runs: list[dict]) -> dict:
        best = sorted(runs, key=lambda x: x["tokens_per_s"])[len(runs) // 2]
        return {**best, "rounds_tokens_per_s": [round(x["tokens_per_s"], 1) for x in runs]}

    return median(hands), median(stages)


def rss(mode: str, path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, mode, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_rss(model: Path, work: Path) -> dict:
    """Peak RSS loading the 2x-duplicated model, plain and shared, each in a fresh process."""
    from modelsurgeon.grow.engine import grow

    plan = work / "double.yaml"
    plan.write_text("name: double-copy\nsteps:\n  - op: interpolate\n    factor: 2\n")
    grown = work / "grown-2x"
    if not grown.exists():
        grow(model, plan, grown)
    out = {mode: rss(mode, grown) for mode in ("import_only", "from_pretrained", "load_shared")}
    out["source_from_pretrained"] = rss("from_pretrained", model)
    return out


def summary_lines(s: dict) -> list[str]:
    a, b = s["train_stage"], s["hand_loop"]
    lines = [
        f"model: {s['model']}; seq {s['seq_len']}, batch {s['batch_size']}, LoRA r {s['lora_r']}, "
        f"{s['timed_steps']} timed steps after {s['warmup_steps']} warm-up; torch threads {s['threads']}; "
        f"{s['repeats']} round(s)",
        f"train-stage: {a['tokens_per_s']:,.0f} tokens/s (rounds {a['rounds_tokens_per_s']}; wall "
        f"{a['wall_s']:.1f} s incl. data, eval, output)",
        f"hand loop:   {b['tokens_per_s']:,.0f} tokens/s (rounds {b['rounds_tokens_per_s']}; wall {b['wall_s']:.1f} s)",
        f"ratio train-stage / hand loop: {s['ratio']:.3f} (target >= 0.95)",
    ]
    for mode, r in s.get("rss", {}).items():
        lines.append(
            f"peak RSS {mode:>22}: {r['peak_rss'] / MB:8.0f} MiB (distinct parameter storage "
            f"{r['param_bytes_held'] / MB:.0f} MiB)"
        )
    return lines


def main() -> None:
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)  # inside peft
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="checkpoint to train (default: SmolLM2-135M if converted, else tiny)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of both runs, alternating order (median reported)")
    ap.add_argument("--skip-rss", action="store_true", help="skip the 2x-duplicated load measurement")
    ap.add_argument("--workdir", type=Path, help="keep files here (default: a temporary directory)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model, label = (args.model, str(args.model)) if args.model else pick_model(work)
        hand, stage = run_pairs(model, args, work)
        s = {
            "model": label,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "lora_r": args.lora_r,
            "timed_steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}",
            "train_stage": stage,
            "hand_loop": hand,
            "ratio": stage["tokens_per_s"] / hand["tokens_per_s"],
        }
        if not args.skip_rss:
            s["rss"] = bench_rss(model, work)
        print(json.dumps(s, indent=2) if args.json else "\n".join(summary_lines(s)))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
