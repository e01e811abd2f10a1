import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "collect.py"
spec = importlib.util.spec_from_file_location("collect", SCRIPT)
collect = importlib.util.module_from_spec(spec)
spec.loader.exec_module(collect)


def test_index_has_a_section_per_csv_with_notes_escaped_and_report_linked(tmp_path):
    (tmp_path / "memory.csv").write_text("config,saved_ratio\n1,0.25\nend-to-end,1.000\n")
    (tmp_path / "throughput.csv").write_text("stage,train_img_s\n<b>,12.5\n")
    (tmp_path / "throughput.txt").write_text("$ python benchmarks/throughput.py\nsummary: a < b\n")
    (tmp_path / "accuracy-runs").mkdir()
    (tmp_path / "accuracy-runs" / "report.html").write_text("<html></html>")
    page = collect.render(tmp_path)
    assert page.count("<section") == 2 and page.index('id="memory"') < page.index('id="throughput"')
    assert '<td class="num">0.25</td>' in page and '<td class="text">end-to-end</td>' in page
    assert "<pre>$ python benchmarks/throughput.py\nsummary: a &lt; b</pre>" in page
    assert '<td class="text">&lt;b&gt;</td>' in page and "<b>" not in page.split("<body>")[1]
    assert 'href="accuracy-runs/report.html"' in page


def test_main_writes_index_and_refuses_an_empty_folder(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text("x\n1\n")
    monkeypatch.setattr(sys, "argv", ["collect.py", "--dir", str(tmp_path)])
    collect.main()
    assert (tmp_path / "index.html").read_text().startswith("<!DOCTYPE html>")
    (tmp_path / "a.csv").unlink()
    with pytest.raises(SystemExit, match="no benchmark CSV"):
        collect.main()
