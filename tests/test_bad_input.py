"""What bad input gets: one line naming the field, file or row, exit 2, and nothing written.

`CASES` is the table of README.md's "What bad input gets" section: each row is run here
through the command line, and `scripts/bad_input_table.py` renders the same rows into the
README (test_readme_table_is_rendered_from_these_cases keeps the two equal).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from swaa_train.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEMO_ASSETS = ROOT / "swaa_train" / "assets" / "tiny-qwen3"
# The demo recipe, small: a bad input must be refused before any of this matters.
SMALL = ["data.synthetic_rows=8", "training.max_steps=2"]


# ------------------------------------------------------------------------------------------
# Files the cases read, written into the test's folder
# ------------------------------------------------------------------------------------------
def _rows(n: int = 4, **changes) -> list[dict]:
    rows = [{"prompt": f"What is {i} + 1?", "completion": f"It is {i + 1}."} for i in range(n)]
    for index, row in changes.items():
        rows[int(index.removeprefix("row"))].update(row)
    return rows


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def _model_with_positions(tmp: Path, positions: int) -> None:
    config = json.loads((DEMO_ASSETS / "config.json").read_text())
    (tmp / "short-model").mkdir()
    (tmp / "short-model" / "config.json").write_text(json.dumps({**config, "max_position_embeddings": positions}))


def _base_of_seed(tmp: Path, seed: int) -> None:
    """What a run with training.seed=`seed` left: its random-init base (and a checkpoint)."""
    base = tmp / "out" / "base-model"
    shutil.copytree(DEMO_ASSETS, base)
    (base / "model.safetensors").write_bytes(b"weights")  # never read: the seed is refused first
    (base / "random_init.json").write_text(json.dumps({"seed": seed}))
    (tmp / "out" / "checkpoint-2").mkdir()
    (tmp / "out" / "checkpoint-2" / "trainer_state.json").write_text("{}")


def _adapter_without_card(tmp: Path) -> None:
    from test_export import make_adapter_dir

    (make_adapter_dir(tmp) / "README.md").unlink()


# ------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------
@dataclass
class Case:
    what: str  # README: what was done (markdown)
    args: list[str]  # the command line after `swaa-train`; {tmp} is the test's folder
    message: str  # README: the part of the one-line error that names what is wrong
    files: dict[str, bytes] = field(default_factory=dict)  # written into {tmp} first
    setup: Callable[[Path], None] | None = None  # more to prepare in {tmp}
    env: dict[str, str] = field(default_factory=dict)


def train(*overrides: str) -> list[str]:
    return ["train", "--recipe", "demo", *SMALL, "training.output_dir={tmp}/out", *overrides]


def data(name: str, *overrides: str) -> list[str]:
    return train(f"data.path={{tmp}}/{name}", "data.max_length=null", *overrides)


CASES = [
    Case(
        "`training.max_length=256` with samples up to `data.max_length=1536`, every sample longer",
        train("training.max_length=256"),
        "no training sample left: SFT data (fusang_long): kept 0 of 8 rows; dropped 8: 0 with judge != 1, "
        "0 shorter than min_length=0 tokens, 8 longer than training.max_length=256 tokens",
    ),
    Case(
        "`training.max_length=256`, `data.max_length=null`, every sample longer",
        train("training.max_length=256", "data.max_length=null"),
        "8 longer than training.max_length=256 tokens",
    ),
    Case(
        "samples longer than the model's positions (`max_position_embeddings: 64`)",
        train("model.name_or_path={tmp}/short-model", f"model.tokenizer={DEMO_ASSETS}", "data.max_length=null"),
        "8 longer than the model's max_position_embeddings=64 tokens",
        setup=lambda tmp: _model_with_positions(tmp, 64),
    ),
    Case(
        "resume with another `training.seed` (random-init base)",
        train("training.seed=1", "training.resume_from_checkpoint=true"),
        "training.seed=1, but {tmp}/out/base-model was generated with seed 0",
        setup=lambda tmp: _base_of_seed(tmp, 0),
    ),
    Case(
        "`training.resume_from_checkpoint=.../checkpoint-2`, stopped while it was written",
        train("training.resume_from_checkpoint={tmp}/out/checkpoint-2"),
        "training.resume_from_checkpoint: {tmp}/out/checkpoint-2 is incomplete",
        setup=lambda tmp: (tmp / "out" / "checkpoint-2").mkdir(parents=True),
    ),
    Case(
        "`swaa.keep_first` >= `swaa.sliding_window_size`",
        train("swaa.keep_first=128"),
        "swaa.keep_first=128 must be smaller than swaa.sliding_window_size=128",
    ),
    Case(
        "`training.learning_rate=abc`",
        train("training.learning_rate=abc"),
        "training.learning_rate must be a number, got 'abc'",
    ),
    Case("`lora.dropout=abc`", train("lora.dropout=abc"), "lora.dropout must be a number, got 'abc'"),
    Case(
        "`lora.target_modules=[c_attn]` on a model without such modules",
        train("lora.target_modules=[c_attn]"),
        "lora.target_modules=['c_attn']: no module of",
    ),
    Case(
        "broken YAML in an override",
        train("swaa.non_sliding_layers=[1, 3"),
        "override swaa.non_sliding_layers=...: the value is not valid YAML: expected ',' or ']'",
    ),
    Case(
        "broken YAML in a recipe",
        ["train", "--recipe", "{tmp}/broken.yaml"],
        "{tmp}/broken.yaml: not valid YAML: expected ',' or ']', but got '<stream end>' (line 3, column 1)",
        files={"broken.yaml": b"model:\n  name_or_path: [x\n"},
    ),
    Case("`export.merge=maybe`", train("export.merge=maybe"), "export.merge must be true or false, got 'maybe'"),
    Case(
        "`model.from_config=yes_please`",
        train("model.from_config=yes_please"),
        "model.from_config must be true or false, got 'yes_please'",
    ),
    Case(
        "`training.max_steps=-3`",
        train("training.max_steps=-3"),
        "training.max_steps must be a positive number of steps, or -1 to train training.num_train_epochs epochs",
    ),
    Case("`data.max_samples=0`", train("data.max_samples=0"), "data.max_samples must be a positive int or null"),
    Case("an empty jsonl", data("empty.jsonl"), "data file {tmp}/empty.jsonl is empty", files={"empty.jsonl": b""}),
    Case(
        "a 0-byte parquet",
        data("empty.parquet"),
        "data file {tmp}/empty.parquet is empty",
        files={"empty.parquet": b""},
    ),
    Case(
        "every row filtered out (`judge` 0)",
        data("judged.jsonl"),
        "no training sample left: SFT data (fusang_long): kept 0 of 2 rows; dropped 2: 2 with judge != 1",
        files={"judged.jsonl": _jsonl([{"prompt": "p", "response": "r", "judge": 0}] * 2)},
    ),
    Case(
        "a non-UTF-8 line in a jsonl",
        data("latin1.jsonl"),
        "data file {tmp}/latin1.jsonl, line 3: not UTF-8 (byte 0xe9 at column 16)",
        files={"latin1.jsonl": _jsonl(_rows(2)) + b'{"prompt": "caf\xe9", "completion": "ok"}\n'},
    ),
    Case(
        "a line that is not JSON in a jsonl",
        data("cut.jsonl"),
        "data file {tmp}/cut.jsonl, line 4: not valid JSON",
        files={"cut.jsonl": _jsonl(_rows(3)) + b'{"prompt": "a", "completion": \n'},
    ),
    Case(
        "a row with an int completion",
        data("int.jsonl"),
        "data.path={tmp}/int.jsonl: row 2: field 'completion' must be a string, got int",
        files={"int.jsonl": _jsonl(_rows(4, row2={"completion": 7}))},
    ),
    Case(
        "`data.path` to a missing file",
        data("missing.jsonl"),
        "data file {tmp}/missing.jsonl does not exist",
    ),
    Case(
        "`model.name_or_path` to a missing folder",
        train("model.name_or_path={tmp}/no/such/model"),
        "model.name_or_path: the folder {tmp}/no/such/model does not exist",
    ),
    Case(
        "`swaa-train eval --limit 0`",
        ["eval", "--model", "{tmp}/m", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/eval", "--limit", "0"],
        "argument --limit: must be >= 1, got 0",
    ),
    Case(
        "`swaa-train push` without network",
        ["push", "{tmp}/adapter", "--repo-id", "me/tiny-swaa"],
        "push to me/tiny-swaa failed: ",
        setup=_adapter_without_card,
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_notARealToken"},  # a closed port
    ),
]


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every folder (None) under `root`."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.what for c in CASES])
def test_bad_input_gets_one_line_naming_it_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    for name, content in case.files.items():
        (tmp_path / name).write_bytes(content)
    if case.setup:
        case.setup(tmp_path)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
        if key == "HF_ENDPOINT":  # huggingface_hub read it when it was imported
            import huggingface_hub.constants

            monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", value)
    before = _snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main([arg.replace("{tmp}", str(tmp_path)) for arg in case.args])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("swaa-train ")]
    assert len(errors) == 1, errors  # one line, no traceback
    expected = case.message.replace("{tmp}", str(tmp_path))
    assert expected in errors[0]
    assert _snapshot(tmp_path) == before  # checked before anything is written


def test_readme_table_is_rendered_from_these_cases():
    from scripts.bad_input_table import readme_section, render_table

    assert readme_section((ROOT / "README.md").read_text()) == render_table(CASES)


def test_a_bad_input_in_a_fresh_process_prints_no_traceback(tmp_path):
    import subprocess
    import sys

    case = next(c for c in CASES if c.what == "a non-UTF-8 line in a jsonl")
    for name, content in case.files.items():
        (tmp_path / name).write_bytes(content)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in case.args]
    done = subprocess.run(
        [sys.executable, "-m", "swaa_train.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("swaa-train train: error: ") and case.message.replace("{tmp}", str(tmp_path)) in last
