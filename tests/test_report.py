"""Report generator: real tiny runs (one sweep per session), the files it writes, the CLI's errors."""
import base64
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from prunegreedy.report import tables as report_tables
from prunegreedy.cli import app
from prunegreedy.report.plots import PLOTS

# The CLI's main() silences this; CliRunner calls the app directly. fvcore traces with TorchScript.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

# run.threads=1: a second torch thread only spins against the other core's work on small CI machines.
TINY = ["--set", "train.epochs=0.2", "--set", "compress.finetune_epochs=0.2", "--set", "model.widths=8,8,16,16",
        "--set", "run.threads=1", "--quiet"]
SWEEP = ["sweep", "--prune-ratios", "0,0.5", *TINY]

SUMMARY_COLUMNS = ["run", "status", "partial", "dataset", "plan", "trainer", "k", "stages_done", "stages_planned", "hook",
                   "prune_ratio", "importance", "reference", "final_acc", "ensemble_acc", "params", "macs",
                   "latency_ms_batch1", "throughput_batch64", "params_with_head", "macs_with_head", "model_bytes",
                   "seconds", "device", "started", "pareto_params", "pareto_macs"]
STAGE_COLUMNS = ["stage", "phase", "width_in", "width_before", "width", "test_acc", "train_loss", "train_acc",
                 "epochs", "seconds", "images_per_s", "params_backbone", "macs_backbone", "params_stage",
                 "macs_stage", "params_head", "macs_head", "prune_ratio", "removed"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def sweep(tmp_path_factory, cache_dir):
    """A two-ratio sweep whose ratio-0.5 slot held an unfinished leftover, which must be moved aside."""
    out = tmp_path_factory.mktemp("sweep")
    (out / "ratio-0.5").mkdir()
    (out / "ratio-0.5" / "run.json").write_text(json.dumps({"status": "failed", "stages_done": 1}))
    res = invoke(*SWEEP, "--out", out)
    assert res.exit_code == 0, res.output
    return out


def copy_run(src: Path, dst: Path, **meta) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**data, **meta}))
    return dst


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.imgs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Tags:
    p = Tags()
    p.feed(path.read_text())
    p.close()
    return p


def test_sweep_writes_runs_and_report(sweep):
    assert (sweep / "ratio-0" / "run.json").exists()
    assert len(list(sweep.glob("ratio-0.5.partial-*"))) == 1
    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary["run"].tolist() == ["ratio-0", "ratio-0.5"]
    assert summary["hook"].tolist() == ["none", "prune"]
    assert summary["reference"].tolist() == [True, False]
    assert not summary["partial"].any()
    assert (summary["model_bytes"] > 0).all()
    stages = pd.read_csv(sweep / "stages.csv")
    assert list(stages.columns) == ["run"] + STAGE_COLUMNS
    # The unpruned run has one row per stage; the pruned one trained, pruned and finetuned rows.
    assert stages.groupby("run").size().to_dict() == {"ratio-0": 4, "ratio-0.5": 12}


def test_sweep_resumes_without_training(sweep):
    res = invoke(*SWEEP, "--out", sweep)
    assert res.exit_code == 0, res.output
    assert res.output.count("already finished, skipped") == 2
    assert "training into" not in res.output


def test_run_writes_its_own_report(sweep):
    run = sweep / "ratio-0.5"
    assert (run / "report.html").exists()
    assert len(pd.read_csv(run / "summary.csv")) == 1
    assert "run" not in pd.read_csv(run / "stages.csv").columns  # its own record is never overwritten


def test_html_is_self_contained_with_tables_and_one_image_per_plot(sweep):
    page = parse(sweep / "report.html")
    assert page.tags.count("table") == 1 + 2  # summary + one per run
    assert page.tags.count("svg") == 0 and page.tags.count("script") == 0 and page.tags.count("link") == 0
    assert len(page.imgs) == len(PLOTS)
    prefix = "data:image/svg+xml;base64,"
    for img in page.imgs:
        assert img["src"].startswith(prefix)
        ET.fromstring(base64.b64decode(img["src"][len(prefix):]))  # a well-formed SVG
    text = " ".join(page.text)
    assert "MACs" in text and "one multiply-add = one MAC" in text
    assert "ratio-0" in text and "8 → 4" in text


def test_names_and_values_are_escaped(sweep, tmp_path):
    odd = copy_run(sweep / "ratio-0.5", tmp_path / 'a<b>&"c')
    res = invoke("report", odd, sweep / "ratio-0", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    raw = (tmp_path / "out" / "report.html").read_text()
    assert "a&lt;b&gt;&amp;&quot;c" in raw and 'a<b>&"c' not in raw
    assert 'a<b>&"c' in " ".join(parse(tmp_path / "out" / "report.html").text)
    assert pd.read_csv(tmp_path / "out" / "summary.csv")["run"].tolist() == ['a<b>&"c', "ratio-0"]


def test_partial_run_is_kept_and_marked(sweep, tmp_path):
    part = copy_run(sweep / "ratio-0.5", tmp_path / "half", status="running", stages_done=2)
    res = invoke("report", part, sweep / "ratio-0", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    row = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    stages = pd.read_csv(part / "stages.csv")
    assert row["partial"] and row["stages_done"] == 2 and row["stages_planned"] == 4
    assert row["final_acc"] == stages[stages["stage"] == 2].iloc[-1]["test_acc"]
    assert not row["pareto_params"] and pd.isna(row["ensemble_acc"])
    assert len(pd.read_csv(tmp_path / "out" / "stages.csv")) == 12 + 4  # no row dropped
    assert '<span class="tag">partial</span>' in (tmp_path / "out" / "report.html").read_text()


def test_bench_numbers_are_shown(sweep, tmp_path):
    run = copy_run(sweep / "ratio-0", tmp_path / "benched")
    (run / "bench.json").write_text(json.dumps({"latency_ms_batch1": 1.25, "throughput_batch64": 5400.0}))
    res = invoke("report", run, "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    row = pd.read_csv(tmp_path / "out" / "summary.csv").iloc[0]
    assert (row["latency_ms_batch1"], row["throughput_batch64"]) == (1.25, 5400.0)
    assert "1.25 ms at batch 1" in (tmp_path / "out" / "report.html").read_text()


def test_pareto_front():
    assert report_tables.pareto_front([1, 2, 3, 2, 5], [10, 20, 15, 20, 30]) == [0, 1, 4]


@pytest.mark.parametrize("case, message", [
    ("not_a_run", "is not a run folder"),
    ("no_stage", "has no finished stage"),
    ("same_name", "two runs are named 'x'"),
])
def test_bad_input_is_one_line_exit_2(sweep, tmp_path, case, message):
    setups = {
        "not_a_run": lambda: [tmp_path],
        "no_stage": lambda: [copy_run(sweep / "ratio-0", tmp_path / "r", status="running", stages_done=0)],
        "same_name": lambda: [shutil.copytree(sweep / "ratio-0", tmp_path / d / "x") for d in ("a", "b")],
    }
    res = invoke("report", *setups[case](), "--out", tmp_path / "out")
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out").exists()


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
PROBE = """<script>
window.onerror = function (m) { document.body.setAttribute("data-errors", String(m)); };
window.addEventListener("load", function () {
  document.body.setAttribute("data-widths",
    JSON.stringify(Array.from(document.images).map(function (i) { return i.naturalWidth; })));
});
</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(sweep, tmp_path):
    page = tmp_path / "page.html"  # a copy with a probe that writes each image's naturalWidth into the DOM
    page.write_text((sweep / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = parse_dom(proc.stdout)
    widths = json.loads(dom["data-widths"])
    assert len(widths) == len(PLOTS) and all(w > 0 for w in widths), widths
    assert "data-errors" not in dom
    # The page has no scripts of its own: any console line is an error (a failed load, a blocked resource).
    assert [line for line in proc.stderr.splitlines() if ":CONSOLE" in line] == []


def parse_dom(text: str) -> dict:
    found = {}

    class Body(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "body":
                found.update(dict(attrs))

    Body().feed(text)
    assert "data-widths" in found, text[:500]
    return found
