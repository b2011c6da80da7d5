"""The README's main command: `lowprec demo --out DIR` on built-in data, end to end."""

import json
import re

import torch
from click.testing import CliRunner

from lowprec.cli import main


def test_demo_runs_the_pipeline_and_writes_an_index(tmp_path):
    threads = torch.get_num_threads()
    try:
        res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "demo"), "--json"])
    finally:
        torch.set_num_threads(threads)
    assert res.exit_code == 0, res.output
    facts = json.loads(res.stdout.strip().splitlines()[-1])
    out = tmp_path / "demo"
    index = (out / "index.html").read_text()
    # the summary links both reports, which exist
    for link in re.findall(r'href="([^"]+)"', index):
        assert (out / link).is_file(), link
    assert {"search/index.html", "drift/index.html"} <= set(re.findall(r'href="([^"]+)"', index))
    # the plan shrinks the tables within the accuracy budget it was validated against
    assert facts["compression"] > 8
    assert facts["validated"]["ne_increase"] <= 0.001 and facts["validated"]["auc_drop"] <= 0.001
    # the drift planted from window 8 is caught there, and nothing alarms before it
    assert facts["alarms"] and min(facts["alarms"]) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert all(not w["alarm"] for w in summary["drift"]["windows"] if w["window"] < 8)
    # a progress bar per stage (on stderr)
    for stage in ("synth", "train", "calibrate", "sensitivity", "validate round 1", "convert", "drift window 5"):
        assert stage in res.stderr, stage
    # it runs again onto its own output (smaller, to keep the suite short): the second run's drift
    # history is of a new (reference, candidate) pair; it once refused the old database after
    # replacing the model and artifact, and every later run failed alike
    try:
        again = CliRunner().invoke(main, ["demo", "--out", str(out), "--rows-per-window", "1000"])
    finally:
        torch.set_num_threads(threads)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "summary.json").read_text()) != summary
