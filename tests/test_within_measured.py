"""`suggest --within-measured` on the demo's own profile (tests/golden/demo.sqlite, the quick grid): nothing
extrapolated, no "may NOT fit", and after dropping what lies outside, each suggestion's train command writes to
its own rank's folder (the demo trains #1 and samples from out/suggest-1)."""

import re
import shutil
from pathlib import Path

from vramfit.cli import main

GOLDEN = Path(__file__).parent / "golden"


def test_within_measured_plans_inside_the_quick_grid(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(GOLDEN / "demo.sqlite", "demo.sqlite")
    assert main(["fit", "--db", "demo.sqlite", "--models", "results/models"]) == 0
    capsys.readouterr()
    rc = main(["suggest", "--vram", "256M", "--target", "cpu", "--vocab", "65", "--block-size", "128", "--n-layer",
               "2,4", "--n-embd", "128,192,256", "--objective", "balanced", "--top", "5", "--within-measured",
               "--suggestions-file", "s.json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "extrapolation" not in err and "may NOT fit" not in err, err
    ranks = re.findall(r"^#(\d+): vramfit train .* --out-dir out/suggest-(\d+)$", out, re.M)
    assert ranks and all(a == b for a, b in ranks), out
    batches = [int(b) for b in re.findall(r"--batch-size (\d+)", out)]
    assert batches and max(batches) <= 16, out  # the quick grid measured batches 8-16
