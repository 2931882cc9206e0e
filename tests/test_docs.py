"""Every `vramfit ...` command in a code block of README.md and docs/*.md runs, so an example cannot break unnoticed.

Each page's commands run in order, in-process (`vramfit.cli.main`), in a fresh copy of one prepared folder: the
golden quick-grid database (tests/golden/demo.sqlite, this project's CPU) as results/vramfit.sqlite with its model
fitted, a prepared char corpus in data/shakespeare_char and its text as input.txt, the grids, a small nanoGPT-style
config/train_shakespeare_char.py and a small cfg.toml. Two things differ from a user's run, by design:
- training and sampling are capped (CAPS is appended to every `train` and `sample`: a later flag wins), so a
  run takes seconds; an `estimate` shown on two pages runs once (PURE);
- a `sweep` of the quick grid finds its 13 points already measured in the golden database and resumes (measures
  nothing) on this project's CPU; on another CPU it measures them (about a minute); so does docs/recipes.md's
  sweep of experiments/grids/recipe_tiny.toml in results/recipes.sqlite (tests/golden/recipes.sqlite: 40 points,
  a few minutes elsewhere); and docs/nanochat.md's of experiments/grids/nanochat_tiny.toml in results/nanochat.sqlite
  (tests/golden/nanochat.sqlite: 10 points, two minutes elsewhere).
The commands in ALLOWED only have their flags parsed (the reason says why); XFAIL lists known failures.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import typer

from vramfit.cli import app, main
from vramfit.cli.app import new_flag_names

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CAPS = {"train": ["--max-iters", "6", "--eval-iters", "1", "--eval-interval", "6"],  # seconds, not minutes
        "sample": ["--max-new-tokens", "20"]}
PURE = ("estimate",)  # a function of its arguments and files alone: a command shown on two pages runs once
NO_PROFILE = ("plans by the dry run, cold: 16 calibration estimates plus re-checks (30-80 s on 2 cores); the same "
              "path runs in tests/test_golden.py::test_no_profile_suggest_unchanged")
ALLOWED = {
    "vramfit suggest --vram 8G --top 3": NO_PROFILE,  # docs/suggest.md: no GPU profile here, so the dry run
    "vramfit suggest --vram 8G --like config/train_shakespeare_char.py --no-profile": "the dry run, cold (see "
    "above); this command runs in a nanoGPT checkout in tests/test_suggest_like.py::"
    "test_the_readme_example_plans_without_a_profile",
    "vramfit sweep --grid experiments/grids/default.toml --executor ray --address auto": "needs a Ray cluster "
    "(tests/test_ray.py runs the executor on a local Ray instance)",
    "vramfit train --nproc 8 --config my.toml": "8 DDP processes (tests/test_ddp.py trains under DDP on gloo)",
    "vramfit fit --loss --corpus data/shakespeare_char": "needs 3 stored training runs of 2+ sizes "
    "(tests/test_losslaw.py fits them)",
}
XFAIL: dict[str, str] = {}  # shown commands known to fail (none)
NANOGPT_CONFIG = """# nanoGPT's config/train_shakespeare_char.py, at small sizes (its keys, read as data)
out_dir = 'out-shakespeare-char'
eval_interval = 10
eval_iters = 2
log_interval = 5
always_save_checkpoint = False
wandb_log = False
dataset = 'shakespeare_char'
gradient_accumulation_steps = 1
batch_size = 8
block_size = 64
n_layer = 2
n_head = 2
n_embd = 64
dropout = 0.2
learning_rate = 1e-3
max_iters = 10
lr_decay_iters = 10
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 2
"""
CFG_TOML = """n_layer = 2
n_head = 2
n_embd = 64
block_size = 64
batch_size = 8
max_iters = 10
eval_interval = 10
eval_iters = 2
data_dir = "data/shakespeare_char"
out_dir = "out"
"""


def shown_commands(page: Path) -> list[tuple[int, list[str]]]:
    """(line, argv) of each `vramfit ...` line (or `$ vramfit ...`) in the page's fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(page.read_text().splitlines(), start=1):
        text = line.strip()
        if text.startswith("```"):
            fenced = not fenced
            continue
        text = text.removeprefix("$ ")
        if fenced and text.startswith("vramfit "):
            out.append((n, shlex.split(text, comments=True)))
    return out


CASES = [(page, n, argv) for page in PAGES for n, argv in shown_commands(page)]


def _parses(args: list[str]) -> None:
    """The command's flags parse (what an allow-listed command is checked for): a renamed flag fails here."""
    group = typer.main.get_command(app)
    args = new_flag_names(args)
    command = group.get_command(typer.Context(group), args[0])
    assert command is not None, f"no command {args[0]!r}"
    command.make_context(args[0], list(args[1:]))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_text) -> Path:
    """The folder every page's commands start from (see the module's docstring)."""
    from gpt.data import prepare_text

    base = tmp_path_factory.mktemp("docs") / "base"
    (base / "results").mkdir(parents=True)
    shutil.copy(GOLDEN / "demo.sqlite", base / "results" / "vramfit.sqlite")
    shutil.copy(GOLDEN / "recipes.sqlite", base / "results" / "recipes.sqlite")
    shutil.copy(GOLDEN / "nanochat.sqlite", base / "results" / "nanochat.sqlite")
    shutil.copytree(ROOT / "experiments" / "grids", base / "experiments" / "grids")
    text = corpus_text[:200_000]
    (base / "input.txt").write_text(text, encoding="utf-8")
    prepare_text(text, base / "data" / "shakespeare_char", tokenizer="char")
    (base / "config").mkdir()
    (base / "config" / "train_shakespeare_char.py").write_text(NANOGPT_CONFIG)
    (base / "cfg.toml").write_text(CFG_TOML)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        assert main(["fit"]) == 0
    return base


@pytest.fixture(scope="module")
def page_folders(prepared) -> dict:
    return {}


@pytest.fixture(scope="module")
def ran() -> dict:
    return {}


@pytest.mark.parametrize(("page", "line", "argv"), CASES,
                         ids=[f"{p.relative_to(ROOT)}:{n}" for p, n, _ in CASES])
def test_shown_command_runs(page, line, argv, prepared, page_folders, ran, monkeypatch, capsys, request):
    shown = " ".join(argv)
    args = argv[1:]
    if shown in ALLOWED:
        _parses(args)
        pytest.skip(f"flags parsed, not run: {ALLOWED[shown]}")
    if shown in XFAIL:
        request.applymarker(pytest.mark.xfail(reason=XFAIL[shown], strict=True))
    if args[0] in PURE and shown in ran:
        pytest.skip(f"ran as {ran[shown]}")
    if page not in page_folders:  # each page starts from the prepared folder, inside a folder of its own
        page_folders[page] = prepared.parent / re.sub(r"\W", "_", page.name) / "work"
        shutil.copytree(prepared, page_folders[page])
    monkeypatch.chdir(page_folders[page])
    rc = main(args + CAPS.get(args[0], []))
    out, err = capsys.readouterr()
    assert rc == 0, f"{page.name}:{line}: `{shown}` exited {rc}\n{out[-2000:]}\n{err[-2000:]}"
    assert "Traceback" not in err
    ran[shown] = f"{page.name}:{line}"


def test_every_page_shows_commands_and_the_lists_are_used():
    shown = {" ".join(argv) for _, _, argv in CASES}
    assert set(ALLOWED) <= shown and set(XFAIL) <= shown, "an allow-listed command is no longer shown"
    assert len(ALLOWED) <= 5
    readme = [argv[1] for p, _, argv in CASES if p.name == "README.md"]
    assert {"sweep", "fit", "suggest", "train", "plot", "report", "estimate"} <= set(readme)
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
