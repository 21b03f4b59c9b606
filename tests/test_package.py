"""The installed product: its public API, and a wheel that carries the recipes and demo assets."""

from __future__ import annotations

import ast
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


# ------------------------------------------------------------------------------------------
# Dependencies
# ------------------------------------------------------------------------------------------
DISTRIBUTION_OF = {"yaml": "pyyaml"}  # import name -> distribution name, where they differ
OPTIONAL = {"matplotlib": "repro", "vllm": "vllm"}  # imported only where installed (loss.png), declared as an extra
# The versions the suite passed on: this machine's, and the GPU image's transformers.
TESTED = {"transformers": ["5.17.0", "5.24.0"], "trl": ["1.16.0"], "peft": ["0.21.2"]}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imported_libraries() -> set[str]:
    names = set()
    for path in [*(ROOT / "swaa_train").glob("*.py"), *(ROOT / "kernels" / "swaa_attn").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("swaa_train", "swaa_attn")}


def test_every_imported_library_is_declared():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = _pyproject()
    names = lambda reqs: {canonicalize_name(Requirement(r).name) for r in reqs}  # noqa: E731
    declared = names(project["dependencies"])
    extras = {extra: names(reqs) for extra, reqs in project["optional-dependencies"].items()}
    imported = _imported_libraries()
    assert {"tqdm", "torch", "trl", "yaml"} <= imported  # the scan sees the package
    for name in imported:
        distribution = canonicalize_name(DISTRIBUTION_OF.get(name, name))
        if name in OPTIONAL:
            assert distribution in extras[OPTIONAL[name]], name
        else:
            assert distribution in declared, f"{name} is imported but not a declared dependency"


def test_libraries_whose_internals_are_used_are_bounded_and_admit_the_tested_versions():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    requirements = {Requirement(r).name.lower(): Requirement(r) for r in _pyproject()["dependencies"]}
    for name, tested in TESTED.items():
        specifier = requirements[name].specifier
        assert any(spec.operator in ("<", "<=", "~=", "==") for spec in specifier), f"{name} has no upper bound"
        for tested_version in [*tested, version(name)]:
            assert specifier.contains(tested_version), (name, tested_version, str(specifier))
    assert str(requirements["torch"].specifier) == ">=2.6"  # pip keeps the torch build installed first


def test_readme_shows_the_new_recipe_fields_and_flags():
    readme = (ROOT / "README.md").read_text()
    for name in (
        "chat_template",
        "eval_path",
        "eval_split",
        "eval_fraction",
        "report_to",
        "push_to_hub",
        "hub_strategy",
    ):
        assert f"`{name}`" in readme or f".{name}" in readme, name
    for flag in ("--config", "--help", "--judge-model", "--max-prompt-tokens", "--length-bins", "--max-new-tokens"):
        assert flag in readme, flag
    for recipe in ("qwen3_swa2k_reference", "qwen3_swa2k", "llama31_swa4k", "demo"):
        assert f"| `{recipe}` |" in readme, recipe
    for written in ("recipe.yaml", "loss.png", "swaa_config.json"):
        assert f"`{written}`" in readme, written
