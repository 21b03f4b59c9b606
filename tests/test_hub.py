"""Pushing to the Hub: what a dry run shows, what a push uploads, that the token never shows, and what\nthe pushes of `training.push_to_hub` carry."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub.utils import filter_repo_objects
from test_export import make_adapter_dir
from test_trainer import _demo_overrides

from swaa_train.cli import main
from swaa_train.hub import CARD_NAME, plan_upload, push_to_hub
from swaa_train.recipe import load_yaml

SECRET = "hf_sentinelTOKENthatMustNeverBePrinted"


@pytest.fixture
def adapter_dir(tmp_path):
    adapter = make_adapter_dir(tmp_path)
    # Training leftovers that must stay local.
    (adapter / "checkpoint-15").mkdir()
    (adapter / "checkpoint-15" / "optimizer.pt").write_bytes(b"state")
    (adapter / "training_args.bin").write_bytes(b"args")
    return adapter


def test_dry_run_lists_adapter_config_and_card_but_never_the_token(adapter_dir, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    main(["push", str(adapter_dir), "--repo-id", "me/tiny-swaa", "--dry-run"])
    out, err = capfd.readouterr()
    listed = [line.split()[0] for line in out.split("--- README.md ---")[0].splitlines() if line.startswith("  ")]
    assert {"adapter_model.safetensors", "adapter_config.json", "swaa_config.json", "README.md"} <= set(listed)
    assert not any(name.startswith(("checkpoint-", "base-model/")) or name == "training_args.bin" for name in listed)
    assert listed == plan_upload(adapter_dir, "me/tiny-swaa").files
    assert out.split("--- README.md ---")[1].strip() == (adapter_dir / "README.md").read_text().strip()
    assert "environment variable HF_TOKEN" in out
    assert SECRET not in out + err


def test_generated_card_names_base_settings_and_loading(adapter_dir):
    (adapter_dir / "README.md").unlink()
    plan = push_to_hub(adapter_dir, "me/tiny-swaa", dry_run=True)
    assert plan.card_generated and "README.md" in plan.files
    assert str(adapter_dir / "base-model") in plan.card and "window 16, keep_first 4" in plan.card
    assert "load_swaa_model" in plan.card
    assert not (adapter_dir / "README.md").exists()  # a dry run writes nothing


class FakeApi:
    """Records what HfApi would have been asked to do."""

    calls: list = []

    def __init__(self, **kwargs):
        FakeApi.calls.append(("init", kwargs))

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, **kwargs):
        FakeApi.calls.append(("upload_folder", kwargs))

    def upload_file(self, **kwargs):
        FakeApi.calls.append(("upload_file", kwargs))


def test_push_creates_repo_and_uploads_planned_files(adapter_dir, monkeypatch, capfd):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    main(["push", str(adapter_dir), "--repo-id", "me/tiny-swaa", "--private"])
    (_, init), (_, repo_id, create), (_, upload) = FakeApi.calls
    assert init == {}  # huggingface_hub finds the token itself
    assert repo_id == "me/tiny-swaa" and create["private"] is True and create["exist_ok"] is True
    assert upload["repo_id"] == "me/tiny-swaa" and upload["folder_path"] == str(adapter_dir)
    assert upload["allow_patterns"] == plan_upload(adapter_dir, "me/tiny-swaa").files
    out, err = capfd.readouterr()
    assert SECRET not in out + err


def test_folder_without_swaa_config_is_refused(adapter_dir):
    (adapter_dir / "swaa_config.json").unlink()
    with pytest.raises(ValueError, match="swaa_config.json"):
        plan_upload(adapter_dir, "me/tiny-swaa")


def test_a_generated_card_goes_up_from_memory_and_nothing_is_written(adapter_dir, monkeypatch):
    (adapter_dir / "README.md").unlink()
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    before = sorted(p.relative_to(adapter_dir) for p in adapter_dir.rglob("*"))
    push_to_hub(adapter_dir, "me/tiny-swaa")
    (_, upload), (_, card) = [call for call in FakeApi.calls if call[0].startswith("upload")]
    assert "README.md" not in upload["allow_patterns"]
    assert card["path_in_repo"] == "README.md"
    assert card["path_or_fileobj"] == plan_upload(adapter_dir, "me/tiny-swaa").card.encode()
    assert sorted(p.relative_to(adapter_dir) for p in adapter_dir.rglob("*")) == before


def test_a_failed_push_is_one_line_and_writes_nothing(adapter_dir, monkeypatch, capsys):
    class Offline(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise OSError("[Errno 101] Network is unreachable\n(and 70 more lines)")

    (adapter_dir / "README.md").unlink()
    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(adapter_dir), "--repo-id", "me/tiny-swaa"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "swaa-train push: error: push to me/tiny-swaa failed: [Errno 101] Network is unreachable"
    )
    assert not (adapter_dir / "README.md").exists()


# ------------------------------------------------------------------------------------------
# training.push_to_hub: the pushes transformers' Trainer makes during and after training
# ------------------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def recorded_hub(monkeypatch):
    """HfApi's create_repo and upload_folder record what they would send, and send nothing."""
    uploads, repos = [], []

    def create_repo(self, repo_id, **kwargs):
        repos.append(repo_id)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, path_in_repo=None, run_as_future=False, **kwargs):
        folder = Path(folder_path)
        present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        patterns = {k: kwargs.get(k) for k in ("allow_patterns", "ignore_patterns")}
        sent = list(filter_repo_objects(present, **patterns))
        uploads.append(
            {
                "repo_id": repo_id,
                "path_in_repo": path_in_repo,
                "files": sent,
                "sha": {name: _sha(folder / name) for name in sent if name.endswith(".safetensors")},
                "card": (folder / "README.md").read_text() if "README.md" in sent else None,
                "swaa": json.loads((folder / "swaa_config.json").read_text()) if "swaa_config.json" in sent else None,
                "recipe": (folder / "recipe.yaml").read_text() if "recipe.yaml" in sent else None,
            }
        )
        if run_as_future:  # what the Trainer waits on
            done = Future()
            done.set_result(None)
            return done
        return None

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # anything not recorded fails instead of reaching the network
    return repos, uploads


# hub_strategy -> where each checkpoint's own folder goes (None: only the output directory is pushed;
# "end": nothing is pushed before the final push)
CHECKPOINT_PATHS = {
    "every_save": None,
    "checkpoint": "last-checkpoint",
    "all_checkpoints": "checkpoint-{step}",
    "end": "",
}


@pytest.mark.parametrize("strategy", sorted(CHECKPOINT_PATHS))
def test_every_training_push_carries_adapter_swaa_config_card_and_recipe(strategy, recorded_hub, tmp_path):
    from swaa_train.run import run_training

    repos, uploads = recorded_hub
    overrides = {
        "training.save_steps": 2,
        "training.push_to_hub": "true",
        "training.hub_model_id": "me/demo-swaa",
        "training.hub_strategy": strategy,
    }
    run_training("demo", _demo_overrides(tmp_path, steps=4, **overrides))
    out = tmp_path / "out"
    expected_paths = []
    for step in (2, 4) if strategy != "end" else ():
        expected_paths.append(None)  # the output directory, where the checkpoint's weights were copied
        if CHECKPOINT_PATHS[strategy]:
            expected_paths.append(CHECKPOINT_PATHS[strategy].format(step=step))
    expected_paths.append(None)  # the final push
    assert repos == ["me/demo-swaa"]
    assert [u["path_in_repo"] for u in uploads] == expected_paths
    swaa = json.loads((out / "swaa_config.json").read_text())
    assert swaa["sliding_window_size"] == 32 and swaa["keep_first"] == 4
    for upload in uploads:
        assert {"adapter_model.safetensors", "adapter_config.json", CARD_NAME, "swaa_config.json"} <= set(
            upload["files"]
        ), upload
        assert upload["repo_id"] == "me/demo-swaa" and upload["swaa"] == swaa
        assert upload["card"].startswith("---") and "# SWAA LoRA adapter" in upload["card"]
        assert "window 32, keep_first 4" in upload["card"] and "trl" not in upload["card"].lower().split("---")[1]
        assert load_yaml(upload["recipe"])["swaa"]["sliding_window_size"] == 32
        assert not any(name.startswith("checkpoint-") for name in upload["files"])
    # The intermediate pushes of the output directory send the checkpoint's adapter, not a stale one.
    root_pushes = [u for u in uploads if u["path_in_repo"] is None]
    first = out / ("checkpoint-2" if strategy != "end" else "") / "adapter_model.safetensors"
    assert root_pushes[0]["sha"]["adapter_model.safetensors"] == _sha(first)
    assert root_pushes[-1]["sha"]["adapter_model.safetensors"] == _sha(out / "adapter_model.safetensors")
    assert "loss.png" in root_pushes[-1]["files"]
