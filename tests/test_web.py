"""The browser demo (`cf-diffusion serve`): its handler functions with the shipped colored-bars model, and one edit in
a real headless browser (Debian's chromium driven by Selenium) that also writes docs/web_demo.png."""

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cf_diffusion import web
from cf_diffusion.cli import build_parser, main
from cf_diffusion.factors import Factor, FactorSchema

MODEL = "colored-bars"
STEPS = 5
SCREENSHOT = Path(__file__).parents[1] / "docs" / "web_demo.png"
BROWSER_INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


@pytest.fixture(scope="module")
def pipe():
    return web.pipeline(MODEL)


@pytest.fixture(scope="module")
def example():
    return web.examples(MODEL)[0]


def test_factor_controls_from_schema():
    schema = FactorSchema(
        [Factor.categorical("digit", range(3)), Factor.continuous("thickness", 0.5, 7.5), Factor.binary("bar")]
    )
    controls = web.factor_controls(schema)
    assert controls == [
        web.FactorControl("digit", levels=("0", "1", "2")),
        web.FactorControl("thickness", low=0.5, high=7.5),
        web.FactorControl("bar", levels=("0", "1")),
    ]
    assert [c.is_slider for c in controls] == [False, True, False]
    chosen = web.interventions(controls, [web.KEEP, (True, 3.25), "1"])
    assert chosen == {"thickness": 3.25, "bar": "1"}
    assert web.interventions(controls, ["2", (False, 3.25), web.KEEP]) == {"digit": "2"}


def test_the_shipped_models_get_their_controls():
    assert [c.levels for c in web.factor_controls(web.pipeline(MODEL).schema)] == [
        tuple(str(d) for d in range(10)),
        ("small", "large"),
        ("red", "green"),
        ("0", "1"),
    ]
    sliders = [(c.name, c.low, c.high) for c in web.factor_controls(web.pipeline("morpho").schema) if c.is_slider]
    assert sliders == [("thickness", 0.5, 7.5), ("intensity", 64.0, 255.0)]
    sliders = [c.name for c in web.factor_controls(web.pipeline("pendulum").schema) if c.is_slider]
    assert sliders == ["pendulum_angle", "light_angle", "shadow_position", "shadow_length"]
    shipped = ["colored-bars", "morpho", "morphomnist", "pendulum"]
    assert web.model_choices("default") == shipped
    assert web.model_choices("runs/my-model") == [*shipped, "runs/my-model"]


def test_factors_read_off_an_example(pipe, example):
    assert web.read_factors(pipe, example["image"]) == example["factors"]
    assert web.parse_factors(pipe.schema, "digit=1 size=small color=green bar=1") == example["factors"]
    with pytest.raises(ValueError, match=r"\['bar'\] missing"):
        web.parse_factors(pipe.schema, "digit=1 size=small color=green")


def test_edit_an_example(pipe, example):
    reports = []
    view = web.run_edit(
        pipe,
        example["image"],
        example["factors"],
        {"color": "red"},
        steps=STEPS,
        progress=lambda fraction, desc: reports.append((desc, fraction)),
    )
    before, after = np.asarray(example["image"], dtype=float), np.asarray(view.image, dtype=float)
    assert after.shape == before.shape
    assert np.abs(after - before).mean() > 1
    red, green = after[..., 0].sum(), after[..., 1].sum()
    assert red > green, "do(color=red) makes the digit red"
    assert view.mask is None  # an image of the model's size keeps no pixels unless asked
    assert "counterfactual: digit=1 size=small color=red" in view.summary
    assert "kept exactly: digit, size" in view.summary
    assert [row[:4] for row in view.rows][0] == ("color", "intervened", "yes", "red")
    assert [row[:2] for row in view.rows][1] == ("bar", "descendant")
    assert reports[-1] == ("prediction", 1.0)
    assert {desc for desc, _ in reports} == {"abduction", "prediction"}
    assert "progress_bar" not in vars(pipe), "the pipeline's own bar is back"


def test_edit_with_preserve_returns_the_mask(pipe, example):
    view = web.run_edit(pipe, example["image"], example["factors"], {"color": "red"}, steps=STEPS, preserve=True)
    assert view.mask.size == example["image"].size
    assert 0 < np.asarray(view.mask).max() == 255


def test_an_edit_needs_an_intervention(pipe, example):
    with pytest.raises(ValueError, match="Choose at least one intervention"):
        web.run_edit(pipe, example["image"], example["factors"], {}, steps=STEPS)


def test_generate(pipe):
    samples = web.run_generate(pipe, "size=large", num_images=2, steps=STEPS)
    assert [image.size for image, _ in samples] == [(32, 32)] * 2
    assert all("size=large" in caption for _, caption in samples)


def test_bad_uploads_give_one_clear_message(pipe, tmp_path, monkeypatch):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"'notes.png' is not an image that can be read"):
        web.open_upload(text)
    odd = tmp_path / "odd.png"
    Image.new("RGB", (40, 40)).save(odd)
    with pytest.raises(ValueError, match=r"at 32x32 pixels"):
        web.read_factors(pipe, web.open_upload(odd))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 40 // 4)
    with pytest.raises(ValueError, match=r"'odd.png' has too many pixels"):
        web.open_upload(odd)
    gradio = pytest.importorskip("gradio")
    from cf_diffusion.web_app import shown_in_page

    with pytest.raises(gradio.Error) as caught:
        shown_in_page(web.open_upload)(text)
    assert caught.value.message == "'notes.png' is not an image that can be read (PNG or JPEG, for example)."


def test_graph_highlights_the_intervened_node_and_its_descendants(pipe):
    graph = pipe.scm.graph  # size <-> color; size -> bar; color -> bar; digit
    assert web.highlighted(graph, ["size"]) == {"size": "intervened", "bar": "descendant"}
    assert web.highlighted(graph, ["bar"]) == {"bar": "intervened"}
    assert web.highlighted(graph, []) == {}

    def has(image, color):
        rgb = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
        return bool((np.abs(np.asarray(image, dtype=int) - rgb).sum(axis=-1) < 6).any())

    plain, edited = web.draw_graph(graph, []), web.draw_graph(graph, ["color"])
    assert not has(plain, web.ROLE_COLORS["intervened"]) and not has(plain, web.ROLE_COLORS["descendant"])
    assert has(edited, web.ROLE_COLORS["intervened"]) and has(edited, web.ROLE_COLORS["descendant"])


def test_the_page_builds_with_one_slot_per_factor():
    pytest.importorskip("gradio")
    from cf_diffusion.web_app import build_app

    app = build_app(MODEL)
    ids = {block.elem_id for block in app.blocks.values() if getattr(block, "elem_id", None)}
    assert {f"slot-{i}-level" for i in range(4)} <= ids and "slot-4-level" not in ids
    assert {"edit-button", "input-image", "output-image", "mask-image", "upload"} <= ids


def test_the_page_handlers_switch_model_edit_and_refuse_bad_uploads(tmp_path, example):
    gradio = pytest.importorskip("gradio")
    from cf_diffusion.web_app import build_app

    app = build_app(MODEL)
    handlers = {f.name: f.fn for f in app.fns.values()}
    switched = handlers["on_model"]("morpho")  # example, state, input, factual text, 4 x (dropdown, box, slider), ...
    assert switched[3].startswith("digit=")
    thickness_slider = switched[4 + 3 * 1 + 2]
    assert (thickness_slider["visible"], thickness_slider["minimum"], thickness_slider["maximum"]) == (True, 0.5, 7.5)
    assert switched[4 + 3 * 3]["visible"] is False  # morpho has 3 factors: the fourth slot is hidden
    slots = [web.KEEP, False, 0, web.KEEP, False, 0, "red", False, 0, web.KEEP, False, 0]
    text = "digit=1 size=small color=green bar=1"
    edited, mask, graph, rows, summary = handlers["on_edit"](
        MODEL, example["image"], text, STEPS, 0, False, *slots, progress=lambda *a, **k: None
    )
    assert edited.size == (32, 32) and mask["visible"] is False and rows[0][:2] == ["color", "intervened"]
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with pytest.raises(gradio.Error, match="is not an image"):
        handlers["on_upload"](MODEL, str(not_an_image))


def test_serve_without_gradio_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    monkeypatch.delitem(sys.modules, "cf_diffusion.web_app", raising=False)
    assert main(["serve"]) == 2
    assert "pip install 'cf-diffusion[web]'" in capsys.readouterr().err
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"no headless browser ({', '.join(missing)} not installed): {BROWSER_INSTALL}")
    pytest.importorskip("selenium", reason="the browser test drives chromium with selenium: pip install selenium")
    pytest.importorskip("gradio", reason="the page needs the [web] extra: pip install -e '.[web]'")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1250",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _wait_for_server(url: str, server: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"cf-diffusion serve exited with {server.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            time.sleep(1)
    pytest.fail(f"cf-diffusion serve did not answer within {timeout} s:\n{log.read_text()}")


def _pixels(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=float)


def test_an_edit_in_a_headless_browser(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    port, log = _free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}/"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "cf_diffusion.cli", "serve", "--model", MODEL, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
        )
    try:
        _wait_for_server(url, server, log)
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        source = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#input-image img")).get_attribute("src")
        driver.find_element(By.CSS_SELECTOR, 'input[aria-label="do(color)"]').click()
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'ul[role=listbox] li[aria-label="red"]')).click()
        driver.find_element(By.ID, "edit-button").click()
        edited = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#output-image img")).get_attribute("src")
        wait.until(lambda d: "descendant" in d.page_source)
        before, after = _pixels(source), _pixels(edited)
        assert after.shape == before.shape == (32, 32, 3)
        assert np.abs(after - before).mean() > 1, "the edit differs from the input"
        assert after[..., 0].sum() > after[..., 1].sum(), "do(color=red) makes the digit red"
        driver.execute_script("window.scrollTo(0, 0)")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        shot = shot.resize((shot.width * 3 // 4, shot.height * 3 // 4), Image.LANCZOS)
        shot.quantize(256).save(SCREENSHOT, optimize=True)
    finally:
        driver.quit()
        server.terminate()
        server.wait(timeout=30)
