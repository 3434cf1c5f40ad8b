"""MODEL arguments: a local checkpoint directory, or a Hugging Face hub id `org/name[@revision]`
fetched through huggingface_hub (its cache, HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE and token
handling, its progress bars). Only what a checkpoint needs is downloaded: configs, safetensors
shards and index, tokenizer and generation files; `.bin` weights only when a repository has no
safetensors."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from modelsurgeon.errors import CheckpointError

# org/name with an optional @revision (branch, tag or commit); the hub's own name rules.
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
# Non-weight files a checkpoint directory carries at its top level besides *.json.
AUX_FILES = re.compile(r"^(tokenizer.*|.*\.model|.*\.tiktoken|merges\.txt|vocab\.txt|vocab\.json|.*\.jinja)$")
BIN_WEIGHTS = re.compile(r"^(pytorch_model|adapter_model)[\w.-]*\.bin(\.index\.json)?$")

Notify = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """("org/name", revision or None) when `text` has the form of a hub id, else None."""
    m = HUB_ID.match(str(text))
    return (m.group("repo"), m.group("revision")) if m else None


def select_files(repo_files: list[str]) -> list[str]:
    """The files of a hub repository that make a checkpoint directory: top-level configs,
    tokenizer files and the safetensors weights (the .bin weights only when there are none).

    Raises:
        CheckpointError: the repository holds neither safetensors nor .bin weights at its top level.
    """
    top = [f for f in repo_files if "/" not in f]
    safetensors = [f for f in top if f.endswith((".safetensors", ".safetensors.index.json"))]
    weights = safetensors or [f for f in top if BIN_WEIGHTS.match(f)]
    if not weights:
        raise CheckpointError(
            f"no safetensors or .bin weights at the top level of the repository (files: {sorted(top)})",
            hint="pass a model repository, or a local checkpoint directory",
        )
    aux = [f for f in top if (f.endswith(".json") and not f.endswith(".index.json")) or AUX_FILES.match(f)]
    return sorted(set(weights) | set(aux))


def resolve_model(text: str | Path, *, notify: Notify | None = _stderr) -> Path:
    """The checkpoint directory MODEL names: an existing local path as given (it wins over a hub
    id of the same form, and `notify` says so), else the hub snapshot of `org/name[@revision]`,
    downloaded into the hub cache when it is not there. Anything else is returned unchanged, for
    the checkpoint reader to report.

    Raises:
        CheckpointError: a hub id that is neither cached nor downloadable (offline, unknown or
            gated repository, unknown revision), naming what was tried and how to fix it.
    """
    path, hub = Path(text), parse_hub_id(str(text))
    if hub is None or path.exists():
        if hub is not None and notify:
            notify(f"{text}: using the local directory {path.resolve()} (not the hub model of that name)")
        return path
    repo, revision = hub
    folder = _snapshot(str(text), repo, revision)
    if notify:
        notify(f"{text}: using hub model {repo} at {folder.name[:12]} ({folder})")
    return folder


def _snapshot(text: str, repo: str, revision: str | None) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    named = repo + (f"@{revision}" if revision else "")
    reason = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else ""
    files = None
    if not reason:
        try:
            files = HfApi().list_repo_files(repo, revision=revision)
        except RevisionNotFoundError:
            raise CheckpointError(
                f"{text}: hub model {repo} has no revision {revision!r}",
                hint="use a branch, tag or commit of the repository, or drop @REVISION",
            ) from None
        except RepositoryNotFoundError:  # also gated and private repositories without a token
            raise CheckpointError(
                f"{text}: no local directory of that name, and the hub has no model {repo} you can access",
                hint="check the name; for a gated or private model log in (`hf auth login`) or set HF_TOKEN",
            ) from None
        except Exception as exc:  # noqa: BLE001 - no network, proxy, hub down: the cache may still have it
            reason = f"the hub could not be reached ({type(exc).__name__})"
    try:
        if files is not None:
            return Path(snapshot_download(repo, revision=revision, allow_patterns=select_files(files)))
        return Path(snapshot_download(repo, revision=revision, local_files_only=True))
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{text}: not a local directory, and hub model {named} is not in the hub cache "
            f"({constants.HF_HUB_CACHE}) and cannot be downloaded: {reason}",
            hint="download it where the hub is reachable, with the same HF_HOME (`hf download " + repo + "`), or unset "
            "HF_HUB_OFFLINE; or pass the checkpoint's directory (e.g. ./"
            + repo.split("/")[1]
            + " or an absolute path)",
        ) from None
    except OSError as exc:  # a download cut short (network, disk): huggingface_hub resumes it on the next run
        raise CheckpointError(
            f"{text}: downloading hub model {named} failed ({exc})",
            hint="run the command again to resume the download, or pass a local checkpoint directory",
        ) from None
