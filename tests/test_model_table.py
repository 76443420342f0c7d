"""The generated README / docs tables are up to date, their numbers are the registry's and the analytic counter's,
and every preset's model card carries its checkpoint, licence, protocol, accuracy and a parity test that exists."""
import ast
import re
from pathlib import Path

import pytest
import yaml

from nonlocal_zoo import model_cards
from nonlocal_zoo.models.flops import count_macs, count_params
from nonlocal_zoo.presets import PRESETS, list_models

ROOT = Path(__file__).resolve().parent.parent


def table_rows(text, marker):
    """Rows (lists of cell strings) of the first Markdown table between the markers of `marker`."""
    block = text.split(f"<!-- {marker}:start -->")[1].split(f"<!-- {marker}:end -->")[0]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_generated_tables_are_up_to_date():
    stale = model_cards.render_generated_blocks(ROOT, check=True)
    assert not stale, f"stale generated tables in {stale}: run `python scripts/render_model_table.py`"


def test_readme_table_numbers_match_registry_and_counter():
    rows = {row[0].strip("`"): row for row in table_rows((ROOT / "README.md").read_text(), "model-table")}
    assert sorted(rows) == list_models(pretrained=True)
    for name, (_, source, protocol, params, macs, accuracy, licence, snippet) in rows.items():
        preset = PRESETS[name]
        pre, meta = preset["preprocessing"], preset["metadata"]
        assert params == f"{count_params(preset['arch'])['trainable'] / 1e6:.1f} M"
        view = (pre["num_frames"], pre["test_crop"], pre["test_crop"], 3)
        assert macs == f"{count_macs(preset['arch'], view)['total'] / 1e9:.1f} G"
        top1, top5 = (float("nan") if v == "–" else float(v) for v in accuracy.split(" / "))
        assert top1 == meta["top1"] and (top5 == meta["top5"] or meta["top5"] is None)
        assert licence == preset["weights"]["licence"]
        assert protocol.startswith(f"{pre['num_frames']}x{pre['sampling_rate']} ({pre['sampling']})")
        assert source in model_cards.SOURCE_NAMES.values()
        call = ast.parse(snippet.strip("`")).body[0].value
        assert call.func.id == "create_model" and call.args[0].value == name
        assert call.keywords[0].arg == "weights" and call.keywords[0].value.value == "kinetics400"
    for name in list_models():
        if PRESETS[name]["weights"] is None:
            assert f"`{name}`" in (ROOT / "README.md").read_text()  # listed among the architecture-only presets


def test_choice_table_is_sorted_by_cost():
    rows = table_rows((ROOT / "docs" / "choose_a_model.md").read_text(), "choice-table")
    names = [row[0].strip("`") for row in rows]
    published = [n for n in list_models(pretrained=True) if PRESETS[n]["metadata"]["top1"] is not None]
    assert sorted(names) == sorted(published)
    gmacs = [float(row[3]) for row in rows]
    assert gmacs == sorted(gmacs)
    for row in rows:
        pre = PRESETS[row[0].strip("`")]["preprocessing"]
        views = pre["test_num_clips"] * pre["test_num_crops"]
        assert int(row[4]) == views
        assert abs(float(row[5]) - float(row[3]) * views / 1e3) < 0.01  # TMACs = GMACs x views


def test_replace_between_markers():
    text = "a\n<!-- t:start -->\nold\n<!-- t:end -->\nb\n"
    assert model_cards.replace_between_markers(text, "t", "new") == "a\n<!-- t:start -->\nnew\n<!-- t:end -->\nb\n"
    with pytest.raises(ValueError, match="<!-- x:start -->"):
        model_cards.replace_between_markers(text, "x", "new")


@pytest.mark.parametrize("name", list_models(include_internal=True))
def test_every_preset_names_an_existing_described_parity_test(name):
    test = PRESETS[name]["parity_test"]
    assert test in model_cards.PARITY_REFERENCES  # the card can say what it compares against
    path, _, function = test.partition("::")
    source = (ROOT / path).read_text()
    assert re.search(rf"^def {function}\(", source, re.MULTILINE), test
    if name not in ("demo", "tiny_nl_i3d"):  # a numerical comparison at the card's stated tolerance
        assert "1e-4" in source or "assert_logits_match" in source or "assert_close" in source, path
    weights = PRESETS[name]["weights"]
    if weights is not None and not weights["package_file"]:  # the test converts a checkpoint of this format
        same_format = [n for n, p in PRESETS.items() if p["weights"] and p["weights"]["format"] == weights["format"]]
        assert any(f'"{n}"' in source for n in same_format), (test, weights["format"])


def test_parity_references_are_all_used():
    assert set(model_cards.PARITY_REFERENCES) == {p["parity_test"] for p in PRESETS.values()}


@pytest.mark.parametrize("name", list_models())
def test_model_card(name):
    card = model_cards.model_card(name)
    preset = PRESETS[name]
    pre, meta, weights = preset["preprocessing"], preset["metadata"], preset["weights"]
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "keras" and front["pipeline_tag"] == "video-classification"
    assert f"# {name}\n" in card
    assert f"{count_params(preset['arch'])['trainable']:,} trainable" in card
    assert f"{pre['num_frames']} RGB frames every {pre['sampling_rate']} frames ({pre['sampling']} sampling)" in card
    assert ", ".join(f"{m:g}" for m in pre["mean"]) in card and ", ".join(f"{s:g}" for s in pre["std"]) in card
    assert f"`{preset['parity_test']}`" in card
    assert "kinetics-400" in front["tags"]
    if weights is None:
        assert "architecture only" in card and "license" not in front
    else:
        assert weights["url"] in card and weights["file_name"] in card
        assert front["license"] == {"CC-BY-NC-4.0": "cc-by-nc-4.0", "Apache-2.0": "apache-2.0"}[weights["licence"]]
        assert f"top-1 {model_cards._fmt_acc(meta['top1'])} %" in card
        if meta["top5"] is not None:
            assert f"top-5 {model_cards._fmt_acc(meta['top5'])} %" in card
    usage = card.split("```python\n")[1].split("```")[0]
    ast.parse(usage)  # the usage snippet is valid Python


def test_model_card_with_measured_parity_and_bad_input():
    card = model_cards.model_card("i3d_r50_8x8_kinetics400_pytorchvideo",
                                  parity={"max_rel_diff": 3.2e-6, "top1_agreement": 1.0, "clips": 4})
    assert "Measured on conversion: max_rel_diff 3.2e-06, top1_agreement 1, clips 4." in card
    assert "custom text" in model_cards.model_card("i3d_r50", parity="custom text")
    with pytest.raises(ValueError, match="parity=3"):
        model_cards.model_card("i3d_r50", parity=3)
    with pytest.raises(ValueError, match="Unknown preset"):
        model_cards.model_card("i3d_nl5_r50_kinetics")


def test_internal_preset_cards():
    demo = model_cards.model_card("demo")
    front = yaml.safe_load(demo.split("---")[1])
    assert front["license"] == "apache-2.0" and "kinetics-400" not in front["tags"]
    assert "12 classes: moving_left, moving_right," in demo and "83,876 trainable" in demo
    assert PRESETS["demo"]["weights"]["sha256"] in demo and "shipped inside the nonlocal_zoo package" in demo
    assert 'VideoClassifier.from_preset("demo")' in demo
    tiny = model_cards.model_card("tiny_nl_i3d")
    assert "license" not in yaml.safe_load(tiny.split("---")[1]) and "architecture only" in tiny
    assert "5 classes: class_0" in tiny and "MMACs per 32x32 test view" in tiny


def test_licence_map_and_render_card():
    assert model_cards.hub_license("CC-BY-NC-4.0") == "cc-by-nc-4.0"
    assert model_cards.hub_license("Apache-2.0") == "apache-2.0"
    assert model_cards.hub_license(None) is None and model_cards.hub_license("custom") is None
    for preset in PRESETS.values():  # every licence of the registry has a Hub identifier
        assert preset["licence"] is None or model_cards.hub_license(preset["licence"])
    name = "i3d_nl5_r50_8x8_kinetics400_pyslowfast"
    assert model_cards.render_card(name) == model_cards.model_card(name)
    hub = model_cards.render_card(name, repo_id="me/i3d", parity={"max_rel_diff": 2e-6})
    assert 'from_preset("hf://me/i3d")' in hub and "Measured on conversion: max_rel_diff 2e-06." in hub
    card = model_cards.render_card(model_name="my_finetuned", labels=["cat", "dog"], licence="CC-BY-NC-4.0",
                                   repo_id="me/pets")
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "cc-by-nc-4.0" and front["library_name"] == "keras"
    assert "# my_finetuned" in card and "Classes (2): cat, dog." in card and "hf://me/pets" in card
    assert "license" not in yaml.safe_load(model_cards.render_card(model_name="m").split("---")[1])


def test_render_script_check_mode(tmp_path, monkeypatch):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_model_table.py"), "--check"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # A stale copy is detected and rewritten.
    for relative in model_cards.GENERATED_BLOCKS:
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / relative).read_text().replace("| `i3d_nl5_r50_8x8_kinetics400` |", "| `x` |"))
    assert model_cards.render_generated_blocks(tmp_path, check=True) == list(model_cards.GENERATED_BLOCKS)
    assert model_cards.render_generated_blocks(tmp_path) == list(model_cards.GENERATED_BLOCKS)
    assert model_cards.render_generated_blocks(tmp_path, check=True) == []
