"""Training stages on grown checkpoints: LoRA/full/new-layer training, LoRA merging, shared
duplicate layers, and optimizer state carried across growth."""


def __getattr__(name: str):
    # torch and transformers load only when a stage runs, so `surgeon --help` stays fast.
    if name in ("TrainOptions", "make_options", "load_options", "parse_layers"):
        from modelsurgeon.train import options

        return getattr(options, name)
    if name in ("train_stage", "StageResult"):
        from modelsurgeon.train import stage

        return getattr(stage, name)
    if name == "work_dir":
        from modelsurgeon.train import workdir

        return workdir.work_dir
    raise AttributeError(name)


__all__ = ["TrainOptions", "make_options", "load_options", "parse_layers", "train_stage", "StageResult", "work_dir"]
