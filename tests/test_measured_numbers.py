"""The README's and docs' measured numbers are those of docs/measured.json, written by scripts/measure_readme.py
(issue 27 item 4): a stale number is a failing test, not a surprise."""
import importlib.util
import json

from script_checks import ROOT


def _script():
    spec = importlib.util.spec_from_file_location("measure_readme", ROOT / "scripts" / "measure_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_quoted_measurement_is_the_recorded_one():
    script = _script()
    records = json.loads(script.MEASURED.read_text())
    assert sorted(records) == sorted(script.MEASUREMENTS)  # every measurement recorded, nothing else
    assert script.stale_spans(records) == []
    quoted = {m["name"] for page in script.PAGES for m in script.SPAN.finditer(page.read_text())}
    assert quoted == set(records)  # every measurement quoted somewhere


def test_the_measured_commands_are_the_readmes_and_baselines_are_stated():
    script = _script()
    readme = (ROOT / "README.md").read_text()
    for name, record in json.loads(script.MEASURED.read_text()).items():
        assert record["command"] in readme, name  # the README shows the command that was measured
        assert 0 < record["majority_oa"] < record["oa"] <= 100, name
        assert "always answering the largest class" in script.render(record)


def test_rewriting_a_page_replaces_only_the_spans(tmp_path, monkeypatch):
    script = _script()
    page = tmp_path / "page.md"
    page.write_text("before <!-- measured:demo -->old<!-- /measured --> after <!-- measured:nope -->x<!-- /measured -->")
    monkeypatch.setattr(script, "PAGES", [page])
    record = {"command": "pointcoc train --config demo", "test_set": "908 shapes", "epoch": 20, "oa": 83.37,
              "macc": 80.29, "test_samples": 908, "majority_oa": 11.01, "wall_s": 248.0, "date": "2026-12-07",
              "machine": "AMD EPYC, 2 cores"}
    assert script.rewrite_pages({"demo": record}) == [page]
    text = page.read_text()
    assert text.startswith("before <!-- measured:demo -->**OA 83.4 % / mAcc 80.3 %** on 908 shapes (final epoch 20; "
                           "always answering the largest class: 11.0 %), 4 min 8 s wall")
    assert text.endswith(" after <!-- measured:nope -->x<!-- /measured -->")
    assert script.stale_spans({"demo": record}) == [(page, "nope")]
