"""MODEL as a hub id: resolved through huggingface_hub from a hub cache laid out as it lays it
out (built here: no network), the local directory winning over a hub id of the same form, only
checkpoint files selected for download, and one clear error offline with nothing cached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import constants
from typer.testing import CliRunner

from modelsurgeon.cli import app
from modelsurgeon.errors import CheckpointError
from modelsurgeon.io.hub import parse_hub_id, resolve_model, select_files

REPO = "tiny-org/tiny-llama"
ROOT = Path(__file__).resolve().parents[1]


def build_hub_cache(home: Path, checkpoint: Path, repo: str = REPO) -> tuple[Path, str]:
    """HF_HOME/hub/models--org--name/{blobs,refs/main,snapshots/<rev>} with snapshot files
    linked to content-addressed blobs, as huggingface_hub writes them."""
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    revision = hashlib.sha1(repo.encode()).hexdigest()
    snapshot = storage / "snapshots" / revision
    (storage / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in checkpoint.iterdir():
        blob = storage / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(revision)
    return snapshot, revision


@pytest.fixture
def offline_hub(tmp_path, tiny, monkeypatch):
    """A cache holding REPO; huggingface_hub pointed at it and offline (its constants are read at import)."""
    snapshot, revision = build_hub_cache(tmp_path / "hf", tiny("llama"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return snapshot, revision


@pytest.mark.parametrize(
    "text,expect",
    [
        ("org/name", ("org/name", None)),
        ("org/name@v1.0", ("org/name", "v1.0")),
        ("org/na.me-2@refs/pr/1", ("org/na.me-2", "refs/pr/1")),
        ("/abs/dir", None),
        ("./org/name", None),
        ("name", None),
        ("a/b/c", None),
        ("../x", None),
    ],
)
def test_hub_id_form(text, expect):
    assert parse_hub_id(text) == expect


def test_resolves_from_the_hub_cache(offline_hub):
    snapshot, revision = offline_hub
    said = []
    assert resolve_model(REPO, notify=said.append) == Path(snapshot)
    assert resolve_model(f"{REPO}@{revision}", notify=None) == Path(snapshot)
    assert "using hub model tiny-org/tiny-llama" in said[0]


def test_grow_and_inspect_take_a_hub_id(offline_hub, tmp_path):
    result = CliRunner().invoke(app, ["grow", REPO, "--plan", "llama-pro", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "surgeon.json").read_text())["source"]["path"].endswith(offline_hub[1])
    assert CliRunner().invoke(app, ["inspect", REPO]).exit_code == 0


def test_local_directory_of_the_same_name_wins(offline_hub, tiny, tmp_path):
    shutil.copytree(tiny("llama", n_layers=2), tmp_path / REPO)
    said = []
    assert resolve_model(REPO, notify=said.append) == Path(REPO)
    assert "using the local directory" in said[0] and str(tmp_path / REPO) in said[0]


def test_offline_and_not_cached_is_one_clear_error(offline_hub):
    with pytest.raises(CheckpointError) as err:
        resolve_model("other-org/missing@main", notify=None)
    message = str(err.value)
    assert "not a local directory" in message and "other-org/missing@main" in message
    assert "HF_HUB_OFFLINE is set" in message and constants.HF_HUB_CACHE in message
    assert "HF_HUB_OFFLINE" in err.value.hint and "pass the checkpoint's directory" in err.value.hint


def test_cli_with_real_environment(tmp_path, tiny):
    """The environment variables as a user sets them, in a fresh process."""
    build_hub_cache(tmp_path / "hf", tiny("llama"))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    ok = subprocess.run(
        [sys.executable, "-m", "modelsurgeon", "inspect", REPO, "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["num_layers"] == 4 and "using hub model" in ok.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "modelsurgeon", "inspect", "tiny-org/absent"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == CheckpointError.exit_code and "HF_HUB_OFFLINE" in bad.stderr, bad.stderr


def test_only_checkpoint_files_are_selected():
    files = [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "pytorch_model.bin.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "README.md",
        "onnx/model.onnx",
        "original/model.safetensors",
        "flax_model.msgpack",
        "tf_model.h5",
    ]
    assert select_files(files) == sorted(
        [
            "config.json",
            "generation_config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ]
    )
    assert "pytorch_model.bin" in select_files(["config.json", "pytorch_model.bin", "tf_model.h5"])
    with pytest.raises(CheckpointError, match="no safetensors or .bin weights"):
        select_files(["config.json", "tf_model.h5"])


def test_online_download_asks_only_for_the_selected_files(tmp_path, monkeypatch):
    calls = {}

    class FakeApi:
        def list_repo_files(self, repo, revision=None):
            return ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json"]

    def fake_download(repo, revision=None, allow_patterns=None, **kw):
        calls.update(repo=repo, revision=revision, allow_patterns=allow_patterns, **kw)
        return str(tmp_path)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    assert resolve_model("org/name@v2", notify=None) == tmp_path
    assert calls == {
        "repo": "org/name",
        "revision": "v2",
        "allow_patterns": ["config.json", "model.safetensors", "tokenizer.json"],
    }
