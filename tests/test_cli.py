"""The command line: `swaa-train train --help` lists every recipe field, --config and --section.field."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from trl import SFTConfig

import swaa_train.run
from swaa_train.cli import main
from swaa_train.recipe import DataArgs, ExportArgs, LoraArgs, MemoryArgs, ModelArgs, load_recipe
from swaa_train.swaa_config import SWAAConfig

SECTION_CLASSES = {
    "model": ModelArgs,
    "swaa": SWAAConfig,
    "lora": LoraArgs,
    "data": DataArgs,
    "training": SFTConfig,
    "export": ExportArgs,
    "memory": MemoryArgs,
}


def _squeezed(text: str) -> str:
    """Text without whitespace: argparse wraps help lines wherever it likes."""
    return "".join(text.split())


def test_train_help_lists_every_section_and_field_with_its_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    squeezed = _squeezed(out)
    assert "--recipe" in out and "--config FILE" in out
    for section, cls in SECTION_CLASSES.items():
        assert f"\n{section}: " in out, section
        fields = [f for f in dataclasses.fields(cls) if f.init]
        assert fields
        for field in fields:
            assert f"--{section}.{field.name} VALUE" in out, (section, field.name)
            assert _squeezed(field.metadata["help"]) in squeezed, (section, field.name)
    assert "(default: 2048)" not in out  # no recipe's values: the dataclass defaults
    assert _squeezed("Dropout on the LoRA input. (default: 0.0)") in squeezed


@pytest.fixture
def ran(monkeypatch):
    """The recipe each `train` call would run (nothing is trained)."""
    calls = []
    monkeypatch.setattr(swaa_train.run, "run_recipe", lambda recipe, raw: calls.append((recipe, raw)))
    return calls


def test_config_file_is_the_recipe_path_and_options_override(ran, tmp_path):
    path = tmp_path / "my_run.yaml"
    _, raw = load_recipe("demo")
    path.write_text(yaml.safe_dump(raw))
    main(["train", "--recipe", str(path), "training.max_steps=3", "lora.r=8"])
    main(["train", "--config", str(path), "training.max_steps=3", "--lora.r", "8"])
    (by_recipe, raw_recipe), (by_config, raw_config) = ran
    assert raw_recipe == raw_config and by_config.name == by_recipe.name == "my_run"
    assert by_config.training.max_steps == 3 and by_config.lora == LoraArgs(r=8)
    assert by_config.swaa == by_recipe.swaa == SWAAConfig(128, 8, True, [1, 3])
    main(["train", "--config", str(path), "--swaa.non_sliding_layers", "[0, 2]", "--training.learning_rate", "1e-3"])
    assert ran[-1][0].swaa.non_sliding_layers == [0, 2] and ran[-1][0].training.learning_rate == 1e-3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config", "demo"], "--config: demo is not a file"),
        (["--recipe", "demo", "--config", "x.yaml"], "not allowed with argument"),
        ([], "one of the arguments --recipe --config is required"),
        (["--recipe", "demo", "--lora.rank", "8"], "unrecognized arguments: --lora.rank"),
        (["--recipe", "demo", "--model.name", "x"], "unrecognized arguments: --model.name"),
    ],
)
def test_train_usage_errors(argv, message, ran, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err and not ran
