"""The training backend: transformers.Trainer over packed token blocks.

Everything distributed (DDP, FSDP, DeepSpeed through `accelerate launch`), mixed precision,
gradient accumulation, checkpointing and resume is the Trainer's own; this module only maps
TrainOptions onto TrainingArguments and seeds AdamW with carried moments when asked."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments, default_data_collator

from modelsurgeon.train.carry import install_state
from modelsurgeon.train.options import TrainOptions


class BlockDataset(torch.utils.data.Dataset):
    """Rows of a [N, seq_len] LongTensor as causal-LM examples (labels = inputs; the model shifts)."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.blocks[i]
        return {"input_ids": row, "labels": row}


def training_arguments(options: TrainOptions, work: Path, total_steps: int, **overrides) -> TrainingArguments:
    """TrainingArguments for a stage; `overrides` (any TrainingArguments field) win."""
    scheduler, scheduler_kwargs = options.scheduler(total_steps)
    kwargs = dict(
        output_dir=str(work),
        max_steps=total_steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size,
        gradient_accumulation_steps=options.grad_accum,
        learning_rate=options.learning_rate,
        weight_decay=options.weight_decay,
        warmup_steps=options.warmup_steps(total_steps),
        lr_scheduler_type=scheduler,
        lr_scheduler_kwargs=scheduler_kwargs,
        max_grad_norm=options.max_grad_norm,
        bf16=options.bf16,
        seed=options.seed,
        data_seed=options.seed,
        logging_strategy="steps",
        logging_steps=options.log_every,
        logging_first_step=True,
        # "steps" strategies with the whole run as the interval still evaluate and save at the
        # last step (DefaultFlowCallback), which is what 0 ("only at the end") means here.
        eval_strategy="steps",
        eval_steps=options.eval_every or total_steps,
        save_strategy="steps",
        save_steps=options.save_every or total_steps,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        ddp_find_unused_parameters=False,  # every trainable tensor is used in each forward pass
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


class StageTrainer(Trainer):
    """Trainer whose AdamW starts from carried moments ({param name: {exp_avg, exp_avg_sq, step}})
    instead of zeros, for continuing after a growth (`--carry-optimizer`)."""

    def __init__(self, *args, carried: dict[str, dict] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.carried = carried or {}

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.carried:
            install_state(optimizer, (self.model if model is None else model).named_parameters(), self.carried)
        return optimizer


def make_trainer(
    model,
    train: torch.Tensor,
    eval_blocks: torch.Tensor,
    args: TrainingArguments,
    callbacks: list,
    carried: dict | None = None,
) -> StageTrainer:
    from transformers.trainer_callback import PrinterCallback

    trainer = StageTrainer(
        model=model,
        args=args,
        train_dataset=BlockDataset(train),
        eval_dataset=BlockDataset(eval_blocks),
        data_collator=default_data_collator,
        callbacks=callbacks,
        carried=carried,
    )
    trainer.remove_callback(PrinterCallback)  # our progress bar and metrics.jsonl report the logs
    return trainer


def last_checkpoint(work: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    return Path(found) if work.is_dir() and (found := get_last_checkpoint(str(work))) else None


def unwrapped_optimizer(trainer: Trainer) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's wrapper."""
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)
