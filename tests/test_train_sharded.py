"""train-stage under `accelerate launch` with FSDP2, two processes on CPU (gloo): the written
checkpoint and AdamW moments equal those of the same run under DDP (the gathering is what is
tested), a LoRA stage writes peft's adapter, and a run stopped by SIGTERM resumes; DeepSpeed
ZeRO-2 and ZeRO-3 on CPU likewise write what DDP writes (skipped where deepspeed is not
installed; .ci/run installs it). Without the package, asking for it fails early with a clear error."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modelsurgeon.errors import TrainError
from modelsurgeon.train.sharded import check_engine

ROOT = Path(__file__).parents[1]
COMMON = (
    "compute_environment: LOCAL_MACHINE\nnum_processes: 2\nnum_machines: 1\nmachine_rank: 0\n"
    "mixed_precision: 'no'\nuse_cpu: true\n"
)
CONFIGS = {  # DDP on CPU runs under torchrun: accelerate's MULTI_CPU needs mpirun for more than one process
    "fsdp2": COMMON + "distributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n"
    "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP\n  fsdp_state_dict_type: SHARDED_STATE_DICT\n"
    "  fsdp_reshard_after_forward: true\n",
    "zero2": COMMON + "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 2\n"
    "  offload_optimizer_device: none\n  offload_param_device: none\n",
    "zero3": COMMON + "distributed_type: DEEPSPEED\ndeepspeed_config:\n  zero_stage: 3\n"
    "  offload_optimizer_device: none\n  offload_param_device: none\n  zero3_init_flag: false\n"
    "  zero3_save_16bit_model: true\n",
}
ARGS = ["--data", "synthetic:arith:n=200", "--seq-len", "32", "--batch-size", "2", "--log-every", "1", "--lr", "3e-3"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp: Path, engine: str, model: Path, out: Path, *args: str, wait: bool = True):
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    port = str(free_port())  # not the default 29500: another job (a vLLM engine, a second suite) may hold it
    if engine == "ddp":
        runner = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:
        config = tmp / f"{engine}.yaml"
        config.write_text(CONFIGS[engine])
        runner = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
        runner += ["--main_process_port", port]
    cmd = [*runner, "-m", "modelsurgeon", "train-stage", str(model), "-o", str(out), *ARGS, *args]
    child = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )  # its own group: SIGTERM reaches the launcher and workers
    if not wait:
        return child
    output, _ = child.communicate(timeout=900)
    assert child.returncode == 0, output[-4000:]
    return output


def assert_same_tensors(a: Path, b: Path, atol: float) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys() and ta
    worst = max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)
    assert worst <= atol, worst


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp2_writes_what_ddp_writes(tiny, tmp_path, method):
    model = tiny("llama")
    for engine in ("ddp", "fsdp2"):
        launch(tmp_path, engine, model, tmp_path / engine, "--steps", "4", "--method", method)
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp2"
    assert_same_tensors(ddp / "model.safetensors", fsdp / "model.safetensors", 1e-5)
    assert_same_tensors(ddp / "optimizer" / "optimizer.safetensors", fsdp / "optimizer" / "optimizer.safetensors", 1e-6)
    changed = load_file(fsdp / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(changed, load_file(model / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"])
    if method == "lora":  # peft's own files, with the full (gathered) LoRA matrices
        assert (fsdp / "adapter" / "adapter_config.json").is_file()
        adapter = Path("adapter") / "adapter_model.safetensors"
        assert_same_tensors(ddp / adapter, fsdp / adapter, 1e-6)


@pytest.mark.slow
def test_fsdp2_sigterm_then_resume(tiny, tmp_path):
    """SIGTERM to the launcher (as a scheduler sends it): each process checkpoints and stops;
    --resume finishes the stage and writes OUT."""
    model, out = tiny("llama"), tmp_path / "out"
    work = tmp_path / ".out.work"
    args = ("--steps", "40", "--save-every", "1000", "--method", "lora")
    child = launch(tmp_path, "fsdp2", model, out, *args, wait=False)
    deadline = time.monotonic() + 600
    while not (work / "metrics.jsonl").is_file() or "loss" not in (work / "metrics.jsonl").read_text():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[0][-4000:]
        time.sleep(0.2)
    os.killpg(child.pid, signal.SIGTERM)
    output, _ = child.communicate(timeout=300)
    assert child.returncode != 0 and not out.exists(), output[-4000:]
    assert "interrupted by SIGTERM" in output, output[-4000:]
    assert list(work.glob("checkpoint-*")), output[-4000:]
    launch(tmp_path, "fsdp2", model, out, *args, "--resume")
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not work.exists()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.parametrize("method", ["full", "lora"])
def test_deepspeed_writes_what_ddp_writes(tiny, tmp_path, stage, method):
    """The gathered weights (ZeRO-3: the consolidated 16-bit state dict, float32 here) equal DDP's;
    OUT/optimizer/ is not written under DeepSpeed (its partitioned AdamW state is not gathered)."""
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (.ci/run installs it: DS_BUILD_OPS=0, no build isolation)")
    model = tiny("llama")
    for engine in ("ddp", stage):
        launch(tmp_path, engine, model, tmp_path / engine, "--steps", "4", "--method", method)
    ddp, ds = tmp_path / "ddp", tmp_path / stage
    assert_same_tensors(ddp / "model.safetensors", ds / "model.safetensors", 1e-5)
    changed = load_file(ds / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(changed, load_file(model / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"])
    assert not (ds / "optimizer").exists()
    if method == "lora":
        adapter = Path("adapter") / "adapter_model.safetensors"  # ZeRO reduces gradients in another order
        assert_same_tensors(ddp / adapter, ds / adapter, 1e-5)


def test_deepspeed_without_the_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(TrainError, match="deepspeed package is not installed") as info:
        check_engine(share_duplicates=False)
    assert "pip install deepspeed" in info.value.hint


def test_share_duplicates_refused_under_fsdp(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(TrainError, match="cannot shard"):
        check_engine(share_duplicates=True)
