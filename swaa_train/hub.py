"""Push an adapter or merged directory to the Hugging Face Hub, with its model card.

What goes up: the model files (adapter or merged weights, configs, tokenizer), swaa_config.json
and README.md (the card; generated if the directory has none). What stays: training state
(checkpoint-*, optimizer, trainer state, runs/), and the random-init base and merged model a
demo run keeps beside its adapter. The token is resolved by huggingface_hub itself (HF_TOKEN,
else the login cache); this module only ever says where it comes from, never what it is.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from pathlib import Path

from transformers.utils import logging

from .export import merged_model_card
from .recipe import mask_secret_text
from .swaa_config import RANDOM_BASE_DIR, SWAA_CONFIG_NAME, find_swaa_config, is_adapter_dir, resolve_base_model

logger = logging.get_logger(__name__)

CARD_NAME = "README.md"
# Matched against every part of a file's path relative to the folder.
EXCLUDE = (
    "checkpoint-*",
    "runs",
    RANDOM_BASE_DIR,
    "merged",
    "eval",
    ".*",
    "__pycache__",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "trainer_state.json",
    "training_args.bin",
)


@dataclasses.dataclass
class UploadPlan:
    folder: Path
    repo_id: str
    files: list[str]  # paths relative to `folder`, README.md included
    card: str
    card_generated: bool  # the folder has no README.md: this card is uploaded (never written into the folder)
    card_masked: bool = False  # the folder's README.md shows a secret: the masked copy is uploaded instead

    @property
    def card_from_memory(self) -> bool:
        return self.card_generated or self.card_masked

    def describe(self) -> str:
        """What a push would do, in words: the repo, each file, then the card."""
        lines = [f"repo: {self.repo_id}", f"folder: {self.folder}", f"token: {token_source()}", "files:"]
        for name in self.files:
            note = " (generated)" if name == CARD_NAME and self.card_generated else ""
            note = " (secrets masked)" if name == CARD_NAME and self.card_masked else note
            size = 0 if note else (self.folder / name).stat().st_size
            lines.append(f"  {name}{note}" + ("" if note else f"  [{size} bytes]"))
        return "\n".join(lines + ["", f"--- {CARD_NAME} ---", self.card.rstrip()])


def token_source() -> str:
    """Where huggingface_hub will take the token from (never the token itself)."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(name):
            return f"environment variable {name}"
    from huggingface_hub import get_token

    return "Hugging Face login cache" if get_token() else "none found (run `hf auth login` or set HF_TOKEN)"


def _excluded(relative: Path) -> bool:
    return any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in EXCLUDE)


def upload_files(folder: Path) -> list[str]:
    files = (p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    return sorted(p.as_posix() for p in files if not _excluded(p))


def default_card(folder: Path) -> str:
    swaa = find_swaa_config(folder)
    if is_adapter_dir(folder):
        from .trainer import model_card

        return model_card(swaa, resolve_base_model(folder), recipe_name="unknown", recipe_raw=None)
    return merged_model_card(swaa, "unknown", "unknown")


def plan_upload(folder: str | Path, repo_id: str) -> UploadPlan:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"folder: {folder} is not a directory")
    if not repo_id or repo_id.count("/") > 1:
        raise ValueError(f"repo_id must be 'name' or 'owner/name', got {repo_id!r}")
    if not (folder / SWAA_CONFIG_NAME).is_file():
        raise ValueError(f"folder: {folder} has no {SWAA_CONFIG_NAME}; nobody could run the model as trained")
    if not (is_adapter_dir(folder) or (folder / "config.json").is_file()):
        raise ValueError(f"folder: {folder} holds neither an adapter (adapter_config.json) nor a model (config.json)")
    files = upload_files(folder)
    card_path = folder / CARD_NAME
    generated = not card_path.is_file()
    card = default_card(folder) if generated else card_path.read_text()
    masked = mask_secret_text(card)  # a card written before secrets were masked (or by hand)
    if generated:
        files = sorted(files + [CARD_NAME])
    return UploadPlan(folder, repo_id, files, masked, generated, card_masked=masked != card and not generated)


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    dry_run: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
) -> UploadPlan:
    """Create `repo_id` if needed and upload the planned files of `folder`; `dry_run` uploads nothing."""
    plan = plan_upload(folder, repo_id)
    if dry_run:
        return plan
    from huggingface_hub import HfApi

    # Nothing is written into the folder: a generated or masked card goes up from memory.
    from_folder = [name for name in plan.files if not (name == CARD_NAME and plan.card_from_memory)]
    message = commit_message or "Upload SWAA model with swaa-train"
    try:
        api = HfApi()  # resolves the token from the environment or the login cache
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        target = str(getattr(url, "repo_id", repo_id))
        api.upload_folder(
            folder_path=str(plan.folder),
            repo_id=target,
            repo_type="model",
            allow_patterns=from_folder,
            commit_message=message,
            revision=revision,
        )
        if plan.card_from_memory:
            api.upload_file(
                path_or_fileobj=plan.card.encode(),
                path_in_repo=CARD_NAME,
                repo_id=target,
                repo_type="model",
                commit_message=message,
                revision=revision,
            )
    except Exception as err:  # offline, no permission, bad token: one line, not the HTTP stack
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConnectionError(f"push to {repo_id} failed: {first}") from err
    logger.info("Uploaded %d files of %s to %s", len(plan.files), plan.folder, url)
    return plan
