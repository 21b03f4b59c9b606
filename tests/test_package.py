"""The installed product: its public API, and a wheel that carries the recipes and demo assets."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import swaa_train

ROOT = Path(__file__).resolve().parent.parent


def test_public_api():
    assert swaa_train.__version__ and swaa_train.__version__[0].isdigit()
    from swaa_train.attention import apply_swaa
    from swaa_train.inference import generate, load_swaa_model
    from swaa_train.recipe import load_recipe
    from swaa_train.swaa_config import SWAAConfig
    from swaa_train.trainer import SWAATrainer

    assert swaa_train.SWAAConfig is SWAAConfig and swaa_train.load_recipe is load_recipe
    assert swaa_train.apply_swaa is apply_swaa and swaa_train.SWAATrainer is SWAATrainer
    assert swaa_train.load_swaa_model is load_swaa_model and swaa_train.generate is generate
    with pytest.raises(AttributeError, match="no_such_name"):
        swaa_train.no_such_name  # noqa: B018


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("swaa_train-*.whl"))


@pytest.mark.slow
def test_wheel_holds_the_product_only(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    recipes = {Path(n).name for n in names if n.startswith("swaa_train/recipes/")}
    shipped = {p.name for p in (ROOT / "recipes").glob("*.yaml")}
    assert shipped and shipped <= recipes
    assert "swaa_train/recipes/accelerate/ddp.yaml" in names
    assert "swaa_train/py.typed" in names and "swaa_train/assets/tiny-qwen3/tokenizer.json" in names
    assert any(n.startswith("swaa_attn/ops.py") for n in names)
    # Research and benchmark harnesses stay out of the installed package.
    assert not any(n.startswith(("experiments/", "benchmarks/", "tests/")) for n in names)


@pytest.mark.slow
def test_installed_recipes_work_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    code = (
        "import swaa_train, pathlib\n"
        "from swaa_train.recipe import load_recipe\n"
        "recipe, _ = load_recipe('demo', ['training.save_strategy=no'])\n"
        f"assert pathlib.Path(swaa_train.__file__).is_relative_to(pathlib.Path(r'{site}'))\n"
        "assert pathlib.Path(recipe.model.name_or_path, 'config.json').is_file(), recipe.model.name_or_path\n"
        "print(recipe.name, recipe.training.save_strategy)\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["demo", "SaveStrategy.NO"]
