"""Evaluation: answer matching, the settings ladder, and an end-to-end run on the demo model."""

from __future__ import annotations

import json

import pytest
from test_export import DEMO_SWAA, make_adapter_dir

from swaa_train.cli import main
from swaa_train.evaluate import default_settings, is_correct, normalize_answer, run_evaluation
from swaa_train.swaa_config import SWAAConfig
from swaa_train.synthetic import make_longqa_rows, write_parquet


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("The access code of the amber vault is 4821.", "4821", True),
        ("It is 48210.", "4821", False),  # whole words only
        ("mira   OKAFOR keeps the archive", "Mira Okafor", True),
        ("Tomas Okafor", "Mira Okafor", False),
        ("The correct answer is (B).", "B", True),
        ("(C) since the text says so", "B", False),
        ("B. The second one", "B", True),
        ("Answer: D", "D", True),
        ("The answer is a dog.", "A", False),  # choice letters are upper case
        ("founded in 1642", ["1624", "1642"], True),
        ("", "4821", False),
    ],
)
def test_is_correct(response, answer, expected):
    assert is_correct(response, answer) is expected


def test_normalize_answer():
    assert normalize_answer("  The  Amber-Vault, an old one!") == "amber vault old one"


def test_default_settings_ladder():
    trained = SWAAConfig(128, 8, True, [1, 3])
    settings = default_settings(trained, num_layers=4, has_adapter=True)
    assert len(settings) == 10 and [s.adapter for s in settings] == [False] * 5 + [True] * 5
    swaa = [s.swaa for s in settings[:5]]
    assert swaa == [
        SWAAConfig(),
        SWAAConfig(128),
        SWAAConfig(128, 8),
        SWAAConfig(128, 8, True),
        SWAAConfig(128, 8, True, [1, 3]),
    ]
    untrained = default_settings(SWAAConfig(64), num_layers=4, has_adapter=False)
    assert untrained[-1].swaa.non_sliding_layers == [1, 3] and untrained[2].swaa.keep_first == 0
    with pytest.raises(ValueError, match="sliding_window_size"):
        default_settings(SWAAConfig(), num_layers=4, has_adapter=False)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    adapter = make_adapter_dir(root)
    rows = make_longqa_rows(4, split="eval", min_words=20, max_words=30)
    return adapter, write_parquet(root / "eval.parquet", rows), rows


def test_eval_end_to_end_writes_table_samples_and_accuracy(demo, tmp_path, capfd):
    adapter, data, rows = demo
    out = tmp_path / "eval"
    main(
        [
            "eval",
            "--model",
            str(adapter),
            "--data",
            str(data),
            "--out",
            str(out),
            "--limit",
            "2",
            "--max-new-tokens",
            "2",
            "--batch-size",
            "2",
        ]
    )
    summary = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(summary) == 10 and len(samples) == 20
    assert summary[4]["swaa"] == SWAAConfig(16, 4, True, DEMO_SWAA.non_sliding_layers).to_dict()
    for row in summary:
        mine = [s for s in samples if s["setting"] == row["setting"]]
        assert [s["answer"] for s in mine] == [r["answer"] for r in rows[:2]]
        assert all(s["correct"] == is_correct(s["response"], s["answer"]) for s in mine)
        assert row["correct"] == sum(s["correct"] for s in mine) and row["total"] == 2
    reference = [s["response"] for s in samples if s["setting"] == "full attention"]
    for row in summary:
        mine = [s["response"] for s in samples if s["setting"] == row["setting"]]
        assert row["same_as_reference"] == sum(a == b for a, b in zip(mine, reference)) / 2
    saved = {row["setting"]: row["kv_cache_saved"] for row in summary}
    # Only layers that never look past window + sinks (no FA decode) drop keys.
    assert saved["naive SWA"] > saved["SWA + sinks"] > 0
    assert saved["full attention"] == saved["SWA + sinks + FA decode"] == 0
    table = capfd.readouterr().out
    assert table == (out / "results.md").read_text()
    assert "| SWA + sinks + FA decode + interleaving + adapter | yes |" in table


def test_eval_settings_file_and_missing_adapter(demo, tmp_path):
    adapter, data, _ = demo
    settings = tmp_path / "settings.yaml"
    settings.write_text("- {name: swa64, swaa: {sliding_window_size: 64, keep_first: 2}}\n")
    out = tmp_path / "eval"
    main(
        [
            "eval",
            "--model",
            str(adapter / "base-model"),
            "--data",
            str(data),
            "--out",
            str(out),
            "--limit",
            "1",
            "--max-new-tokens",
            "2",
            "--settings",
            str(settings),
        ]
    )
    (row,) = json.loads((out / "results.json").read_text())
    assert row["setting"] == "swa64" and row["swaa"]["keep_first"] == 2 and not row["adapter"]
    settings.write_text("- {name: tuned, adapter: true, swaa: {sliding_window_size: 64}}\n")
    with pytest.raises(ValueError, match="no adapter"):
        main(
            [
                "eval",
                "--model",
                str(adapter / "base-model"),
                "--data",
                str(data),
                "--out",
                str(out),
                "--settings",
                str(settings),
            ]
        )


def test_eval_data_needs_prompt_and_answer(demo, tmp_path):
    adapter, _, rows = demo
    bad = write_parquet(tmp_path / "bad.parquet", [{"prompt": r["prompt"]} for r in rows])
    with pytest.raises(ValueError, match="answer"):
        run_evaluation(str(adapter), str(bad), str(tmp_path / "out"))
