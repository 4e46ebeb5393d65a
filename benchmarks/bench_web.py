"""One edit in the browser page (`cf-diffusion serve`) against the same edit with the CLI (`cf-diffusion edit`).

The edit: the model's first example image, do(color=red) (factors read off the image by the predictor, as both do
by default), S DDIM steps, seed 0. CLI: the wall time of the whole `cf-diffusion edit` process (start-up, imports,
model loading, edit, writing the PNG), which is what a user of the CLI waits. Page: in headless chromium (Selenium),
the time from the click on Edit to the edited image shown, the page reloaded before each round (the server has the
model loaded, as it does once it serves). Rounds alternate; the table gives medians.

    python benchmarks/bench_web.py                    # colored-bars, 50 steps, 3 rounds
    python benchmarks/bench_web.py --steps 25 --repeats 5
"""

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from cf_diffusion.models import model_path


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1250")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_edit(model: str, image: Path, steps: int, out: Path) -> float:
    command = ["cf-diffusion", "edit", "--model", model, "--image", str(image), "--do", "color=red", "--overwrite"]
    start = time.perf_counter()
    subprocess.run([*command, "--steps", str(steps), "--out", str(out)], check=True, capture_output=True)
    return time.perf_counter() - start


def _page_edit(driver, url: str, steps: int) -> float:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    wait = WebDriverWait(driver, 600)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#input-image img"))
    box = driver.find_element(By.CSS_SELECTOR, "#steps input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(steps), Keys.TAB)
    driver.find_element(By.CSS_SELECTOR, 'input[aria-label="do(color)"]').click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'ul[role=listbox] li[aria-label="red"]')).click()
    start = time.perf_counter()
    driver.find_element(By.ID, "edit-button").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#output-image img"))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="colored-bars")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    image = model_path(args.model) / "examples" / "example_0.png"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        ["cf-diffusion", "serve", "--model", args.model, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    driver = _browser()
    cli, page = [], []
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("cf-diffusion serve exited")
                time.sleep(1)
        with tempfile.TemporaryDirectory() as folder:
            for _ in range(args.repeats):
                cli.append(_cli_edit(args.model, image, args.steps, Path(folder) / "edit.png"))
                page.append(_page_edit(driver, url, args.steps))
    finally:
        driver.quit()
        server.terminate()
        server.wait()
    cli_time, page_time = statistics.median(cli), statistics.median(page)
    print(f"{args.model}, example 0, do(color=red), seed 0; medians\n")
    print("| steps | rounds | CLI: `cf-diffusion edit` (s) | page: click to edit shown (s) | page / CLI |")
    print("|---|---|---|---|---|")
    print(f"| {args.steps} | {args.repeats} | {cli_time:.2f} | {page_time:.2f} | {page_time / cli_time:.2f} |")


if __name__ == "__main__":
    main()
