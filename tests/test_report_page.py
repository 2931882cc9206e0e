"""The report's what-fits calculator, driven in headless Chromium: what the page shows is what `vramfit predict`
and `vramfit suggest` print, from the model coefficients embedded in the page.

Needs Debian's `chromium` and `chromium-driver` (scripts/setup.sh installs them with apt-get when run as root) and
selenium (dev extra); skipped, with the reason, only where no browser is installed.
"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from planner_data import synthetic_points
from test_throughput import timed_synthetic

from vramfit.cli import main
from vramfit.fit.features import features
from vramfit.fit.memmodel import fit_points
from vramfit.fit.throughput import predict_ms
from vramfit.plan.ddp import for_strategy
from vramfit.plan.workflows import model_filename
from vramfit.show.context import PlanContext
from vramfit.show.report import render_report, write_report
from vramfit.units import SizeError, parse_size

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
SHAPE = ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size")


def _skip_reason() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if CHROMIUM is None or DRIVER is None:
        return "no chromium/chromedriver on PATH (apt-get install chromium chromium-driver; scripts/setup.sh does "\
               "it as root)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A report of synthetic timed points (both memory regimes, both transients, a throughput model), and the
    model file `vramfit fit` would write for the same points."""
    tmp = tmp_path_factory.mktemp("page")
    points = timed_synthetic(noise=0.01)
    report = fit_points(points, target="nvml")
    model = report.save(tmp / "models" / model_filename(report.device, report.recipe_key))
    ctx = PlanContext(vram_bytes=8 * 2**30, reserve_bytes=0, vocab_size=50304, sources=["test"])
    html = render_report([(report, points)], points, tmp / "report.html", ctx, models_dir=tmp / "models",
                         source="synthetic")
    return {"html": html, "model": model, "report": report, "tmp": tmp}


@pytest.fixture(scope="module")
def browser(page):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.get(page["html"].as_uri())
    assert driver.find_element("tag name", "body").get_attribute("data-calculator") == "ready"
    yield driver
    driver.quit()


def _set(driver, **values) -> None:
    """Type each value into its input as a person would (each keystroke fires the page's input event)."""
    from selenium.webdriver.common.keys import Keys

    for key, value in values.items():
        el = driver.find_element("id", f"vf-{key}")
        el.send_keys(Keys.CONTROL, "a")
        el.send_keys(Keys.DELETE)
        el.send_keys(str(value))


def _read(driver) -> dict:
    return driver.execute_script("""
        const b = (id) => document.getElementById(id).dataset.bytes;
        const parts = {};
        document.querySelectorAll('#vf-breakdown tr').forEach((tr) => { parts[tr.dataset.part] = tr.dataset.bytes; });
        return {predicted: b('vf-predicted'), margin: b('vf-margin'), need: b('vf-need'), budget: b('vf-budget'),
                regime: document.getElementById('vf-regime').textContent, parts: parts,
                fits: document.getElementById('vf-verdict').dataset.fits,
                largest: document.getElementById('vf-largest').dataset.batch,
                ms: document.getElementById('vf-ms').dataset.value || null,
                tps: document.getElementById('vf-tps').dataset.value || null,
                error: document.getElementById('vf-error').textContent};""")


def _random_configs(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        head_dim = int(rng.choice([32, 64, 128]))
        H = int(rng.integers(1, 17))
        out.append({"n_layer": int(rng.integers(1, 49)), "n_head": H, "n_embd": H * head_dim,
                    "block_size": int(rng.choice([64, 128, 256, 512, 1024, 2048])),
                    "batch_size": int(rng.integers(1, 65)),
                    "vocab_size": int(rng.choice([65, 256, 8192, 50257, 50304]))})
    return out


def _predict(capsys, model, cfg) -> dict:
    args = ["predict", "--model", str(model), "--json"]
    for k in SHAPE:
        args += [f"--{k.replace('_', '-')}", str(cfg[k])]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def test_page_equals_predict_for_random_configs(browser, page, capsys):
    """25 random shapes typed into the page: predicted bytes, margin, regime and every breakdown part equal
    `vramfit predict --json` to the byte; ms/iter and tokens/s equal the throughput model's."""
    _set(browser, vram="8G", reserve="0", gpus="1")
    regimes, in_layer = set(), 0
    tp = page["report"].throughput.model
    for cfg in _random_configs(25):
        _set(browser, **cfg)
        got, want = _read(browser), _predict(capsys, page["model"], cfg)
        assert got["error"] == "", cfg
        assert int(got["predicted"]) == want["predicted_bytes"], cfg
        assert int(got["margin"]) == want["margin_bytes"], cfg
        assert got["regime"] == want["regime"], cfg
        assert {k: int(v) for k, v in got["parts"].items()} == want["breakdown"], cfg
        need = want["predicted_bytes"] * (1 + page["report"].margin_rel)
        assert got["fits"] == ("true" if need <= 8 * 2**30 else "false")
        ms = float(predict_ms(tp, *(cfg[k] for k in SHAPE))[0])
        assert float(got["ms"]) == pytest.approx(ms, rel=1e-12)
        assert float(got["tps"]) == pytest.approx(cfg["batch_size"] * cfg["block_size"] / (ms / 1000), rel=1e-12)
        regimes.add(want["regime"])
        in_layer += want["breakdown"]["logits"] == 0 and want["regime"] == "backward"
    assert regimes == {"backward", "optimizer step"} and in_layer > 0  # every branch of the formula was checked


def test_page_adds_the_ddp_term_with_several_gpus(browser, page):
    """With GPUs > 1 the page predicts per-GPU memory as plan.ddp's DdpMemoryModel: + 4 B/param of buckets and
    NCCL's per-GPU constant."""
    model = for_strategy(page["report"].model, 4, None)
    for cfg in _random_configs(5, seed=1):
        _set(browser, gpus="4", **cfg)
        got = _read(browser)
        f = features(*(cfg[k] for k in SHAPE))
        assert int(got["predicted"]) == int(model.predict(f)[0])
        part = model.breakdown(f)[0]
        part.pop("regime")
        assert {k: int(v) for k, v in got["parts"].items()} == {k: int(v) for k, v in part.items()}
        assert got["ms"] is None  # the throughput model plans one GPU
    _set(browser, gpus="1")


@pytest.mark.parametrize("shape, vram, reserve, gpus", [
    ({"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304}, "8G", "500M", 1),
    ({"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": 65}, "2G", "0", 1),
    ({"n_layer": 24, "n_head": 16, "n_embd": 1024, "block_size": 2048, "vocab_size": 50304}, "24G", "1G", 2),
    ({"n_layer": 48, "n_head": 25, "n_embd": 1600, "block_size": 1024, "vocab_size": 50304}, "4G", "0", 1),
])
def test_largest_batch_equals_suggest(browser, page, capsys, shape, vram, reserve, gpus):
    _set(browser, vram=vram, reserve=reserve, gpus=str(gpus), batch_size=1, **shape)
    got = _read(browser)
    args = ["suggest", "--vram", vram, "--reserve", reserve, "--gpus", str(gpus), "--model", str(page["model"]),
            "--json", "--top", "1", "--data-dir", str(page["tmp"] / "no-corpus"),
            "--save", str(page["tmp"] / "s.json")]
    for k, v in shape.items():
        args += ["--vocab" if k == "vocab_size" else f"--{k.replace('_', '-')}", str(v)]
    rc = main(args)
    items = json.loads(capsys.readouterr().out)["suggestions"]
    want = str(items[0]["batch_size"]) if items else ""
    assert rc == (0 if items else 1) and got["largest"] == want
    assert int(got["budget"]) == parse_size(vram) - parse_size(reserve)


SIZES = ["8G", "7.5GiB", "8000M", "8192MiB", " 12 g ", ".5T", "1.", "100", "8gb", "0.3G", "3k", "2.5e3", "8iB",
         "8Q", "", "G", "1,5G", "0.0000001K", "constructor"]


def test_budget_input_parses_sizes_as_parse_size(browser):
    _set(browser, n_layer=2, n_head=2, n_embd=128, block_size=64, batch_size=1, vocab_size=65, reserve="0")
    for text in SIZES:
        _set(browser, vram=text)
        got = _read(browser)
        try:
            want = parse_size(text)
        except SizeError:
            want = None
        if want is None:
            assert got["error"].startswith("error: cannot parse size"), text
        else:
            assert got["error"] == "" and int(got["budget"]) == want, text
    _set(browser, vram="8G")


def test_bad_shape_is_one_message(browser):
    _set(browser, n_head=3, n_embd=128)
    assert "must be divisible by n_head (3)" in _read(browser)["error"]
    assert browser.find_element("id", "vf-outputs").get_attribute("hidden") is not None
    _set(browser, n_head=2)
    assert _read(browser)["error"] == ""


def test_provenance_and_chart(browser, page):
    report = page["report"]
    prov = browser.find_element("css selector", ".vf-prov").text
    for fact in (report.device, report.recipe_key, report.data_hash, "same data hash", "shape held out",
                 f"{report.metrics['ours']['grouped']['mape']:.2%}"):
        assert fact in prov
    _set(browser, n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8, vocab_size=50304, vram="8G")
    colours = browser.execute_script("""
        const c = document.getElementById('vf-chart'), g = c.getContext('2d');
        const d = g.getImageData(0, 0, c.width, c.height).data, seen = new Set();
        for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]);
        return seen.size;""")
    assert colours > 20  # cells coloured by need / budget, not an empty canvas


def test_screenshot_is_not_blank_and_page_is_small(browser, page):
    from PIL import Image

    _set(browser, n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8, vocab_size=50304, vram="8G")
    browser.set_window_size(1280, 900)
    browser.execute_script("window.scrollTo(0, document.getElementById('calculator').offsetTop - 10)")
    png = browser.get_screenshot_as_png()
    (page["tmp"] / "calculator.png").write_bytes(png)
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255
    assert img.shape[1] >= 1000 and img.shape[0] >= 600
    assert img.std() > 0.1 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    assert page["html"].stat().st_size < 1_000_000
    html = page["html"].read_text()
    assert html.count("data:image/png;base64,") == 7 and "http://" not in html and "https://" not in html
    assert "<script src" not in html and "<link" not in html  # no CDN: everything is in the page


def test_synthetic_untimed_points_still_make_a_page(tmp_path):
    """Without a throughput model the page says so instead of ms/iter."""
    ctx = PlanContext(vram_bytes=2**30, reserve_bytes=0, vocab_size=512, sources=["test"])
    points = synthetic_points().iloc[::4]  # 27 points: a quick fit
    html = write_report(points, tmp_path / "r.html", ctx, models_dir=tmp_path).read_text()
    assert '"throughput":null' in html and "none saved" in html


def test_named_cards_from_vramfit_cards(browser, page, monkeypatch):
    """The budget input takes the names of `vramfit.cards.CARDS` too (the table `--vram` reads)."""
    import vramfit.cards

    card = vramfit.cards.Card("rtx-test", "RTX Test", 8_361_738_240, "test")
    other = vramfit.cards.Card("t-x", "X", 2**34, "test")
    monkeypatch.setattr(vramfit.cards, "CARDS", {"rtx-test": card, "t-x": other})
    report = page["report"]
    ctx = PlanContext(vram_bytes=8 * 2**30, reserve_bytes=0, vocab_size=50304, sources=["test"])
    points = timed_synthetic(noise=0.01)
    cards = render_report([(report, points)], points, page["tmp"] / "cards.html", ctx,
                          models_dir=page["tmp"] / "models")
    try:
        browser.get(cards.as_uri())
        for text, want in (("rtx-test", card.total_bytes), (" T-X ", 2**34), ("8G", 8 * 2**30)):
            _set(browser, vram=text)
            assert int(_read(browser)["budget"]) == want, text
        _set(browser, vram="rtx-9999")
        assert "or a card: rtx-test, t-x" in _read(browser)["error"]
    finally:
        browser.get(page["html"].as_uri())


@pytest.fixture(scope="module")
def switch_page(tmp_path_factory):
    """The calculator of tests/golden/recipes.sqlite's profile (docs/recipes.md's sweep: one profile prices 8
    recipes) on a page of its own, and its model file, in a browser of its own."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from vramfit.plan.workflows import fit_store
    from vramfit.shape import Shape
    from vramfit.show.calculator import calculator_section, model_entry
    from vramfit.store import Store

    tmp = tmp_path_factory.mktemp("switch-page")
    shutil.copy(Path(__file__).parent / "golden" / "recipes.sqlite", tmp / "recipes.sqlite")
    with Store(tmp / "recipes.sqlite", readonly=True) as store:
        points = store.points_frame()
    ((report, rows),) = fit_store(points)
    model = report.save(tmp / "models" / model_filename(report.device, report.recipe_key))
    ctx = PlanContext(vram_bytes=64 * 2**20, reserve_bytes=0, vocab_size=65, sources=["test"])
    shape = Shape(4, 2, 128, 64, 8, 65)
    entry = model_entry(report, ctx, shape, tmp / "models", "recipes.sqlite", rows)
    html = tmp / "calculator.html"
    html.write_text(f"<!doctype html><html><body>{calculator_section([entry], [shape], ctx)}</body></html>")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.get(html.as_uri())
    assert driver.find_element("tag name", "body").get_attribute("data-calculator") == "ready"
    yield driver, model, report
    driver.quit()


def test_page_prices_the_recipe_switches_as_predict_does(switch_page, capsys):
    """The switches typed into the page (accumulation, checkpointing every block or every 2nd, each optimizer
    measured) give `vramfit predict --json`'s bytes, breakdown and ms per optimizer step; one not measured is an
    error line, as in predict."""
    driver, model, _ = switch_page
    _set(driver, vram="64M", reserve="0", gpus="1")
    for cfg, accum, ck, opt in ([
            (dict(n_layer=4, n_head=2, n_embd=128, block_size=64, batch_size=8, vocab_size=65), 4, "all", "adafactor"),
            (dict(n_layer=3, n_head=2, n_embd=96, block_size=128, batch_size=2, vocab_size=65), 1, "2", "fused"),
            (dict(n_layer=6, n_head=4, n_embd=256, block_size=64, batch_size=16, vocab_size=65), 2, "none", "fused"),
            (dict(n_layer=2, n_head=2, n_embd=64, block_size=256, batch_size=32, vocab_size=65), 8, "1", "adafactor")]):
        _set(driver, **cfg, grad_accum=accum, checkpoint=ck, optimizer=opt)
        got = _read(driver)
        args = ["predict", "--model", str(model), "--json", "--grad-accum", str(accum), "--checkpoint", ck,
                "--optimizer", opt]
        for k in SHAPE:
            args += [f"--{k.replace('_', '-')}", str(cfg[k])]
        assert main(args) == 0
        want = json.loads(capsys.readouterr().out)
        assert got["error"] == "", cfg
        assert int(got["predicted"]) == want["predicted_bytes"], cfg
        assert {k: int(v) for k, v in got["parts"].items()} == want["breakdown"], cfg
        assert got["regime"] == want["regime"], cfg
        assert float(got["ms"]) == pytest.approx(want["ms_per_step"], rel=1e-9), cfg
    _set(driver, optimizer="sgd")
    assert _read(driver)["error"].startswith("error: this profile measured the optimizers adafactor, fused, not sgd")
