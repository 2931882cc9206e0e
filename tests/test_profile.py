"""One Profile type: saved and read back through the same class, and the documented rule that picks one."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
from planner_data import synthetic_points

from vramfit.errors import VramfitError
from vramfit.fit.memmodel import fit_points
from vramfit.fit.profile import Profile, latest
from vramfit.plan.workflows import open_profile


@pytest.fixture(scope="module")
def fitted() -> Profile:
    return fit_points(synthetic_points(), target="nvml")


def test_saved_and_loaded_by_the_same_class(fitted, tmp_path):
    back = Profile.load(fitted.save(tmp_path / "p.json"))
    assert back.to_json() == fitted.to_json()
    assert back.kind == "cuda" and back.source == "sweep" and back.fitted_at == fitted.fitted_at
    with pytest.raises(AttributeError):
        back.margin_rel = 0.5  # frozen: a profile is read, never patched
    doc = json.loads((tmp_path / "p.json").read_text())
    doc["margin_rel"] = float("nan")
    (tmp_path / "nan.json").write_text(json.dumps(doc))
    with pytest.raises(VramfitError, match="is not a usable vramfit model file: its margin_rel is nan"):
        Profile.load(tmp_path / "nan.json")


def test_the_dry_run_profile_is_a_profile(fitted):
    dry = Profile(fitted.model, "nvml", "CUDA sm86 (not profiled)", "k", {}, 0.01, device_type="cuda",
                  source="dry-run")
    assert dry.kind == "cuda" and dry.baseline is None and dry.to_json()["source"] == "dry-run"
    assert Profile.from_json(dry.to_json()).model.to_dict() == fitted.model.to_dict()


def test_latest_is_the_most_recent_fit_of_the_kind_not_the_newest_file(fitted, tmp_path):
    replace(fitted, device="b", fitted_at="2026-03-01T00:00:00+00:00").save(tmp_path / "b.json")
    replace(fitted, device="a", fitted_at="2026-05-01T00:00:00+00:00").save(tmp_path / "a.json")
    old = fitted.to_json() | {"device": "old"}
    del old["fitted_at"]  # fitted before vramfit recorded the time: the oldest
    (tmp_path / "z-old.json").write_text(json.dumps(old))
    (tmp_path / "notes.json").write_text("[]")  # not a profile: skipped
    replace(fitted, device="cpu", device_type="cpu", target="tracked",
            fitted_at="2026-12-01T00:00:00+00:00").save(tmp_path / "cpu.json")
    os.utime(tmp_path / "b.json", (2e9, 2e9))  # a file touched later is not a later fit
    assert latest(tmp_path, "cuda")[1].device == "a"
    assert latest(tmp_path, "cpu")[1].device == "cpu"
    assert latest(tmp_path)[1].device == "cpu"
    assert open_profile(None, tmp_path)[1].device == "a"  # predict: a GPU's before a CPU's
    (tmp_path / "a.json").unlink()
    (tmp_path / "b.json").unlink()
    assert latest(tmp_path, "cuda")[1].device == "old"
    assert latest(tmp_path / "none", "cuda") is None
    with pytest.raises(VramfitError, match="no fitted model in"):
        open_profile(None, tmp_path / "none")
