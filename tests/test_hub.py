"""Pushing to the Hub: what a dry run shows, what a push uploads, and that the token never shows."""

from __future__ import annotations

import huggingface_hub
import pytest
from test_export import make_adapter_dir

from swaa_train.cli import main
from swaa_train.hub import plan_upload, push_to_hub

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
