"""The marimo app (notebooks/manipulate.py) served by ``marimo run`` and driven by headless Chromium.

Builds the tiny seg chain (shared with test_manipulate.py), serves the app against it, moves
sliders until the shown prediction changes, and saves a screenshot under the test's tmp folder.
Needs Debian's ``chromium`` + ``chromium-driver`` (``.ci/run`` installs them) and selenium (the
``test`` extra); skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from test_manipulate import built_project

from helpers import REPO

pytestmark = [pytest.mark.browser, pytest.mark.slow]

APP = REPO / "notebooks" / "manipulate.py"
# every [role=slider] element, also inside (nested) shadow roots of marimo's custom elements
FIND_SLIDERS = """
function all(root, out) {
  for (const e of root.querySelectorAll('*')) { if (e.matches('[role=slider]')) out.push(e); if (e.shadowRoot) all(e.shadowRoot, out); }
  return out;
}
return all(document, []);
"""
READOUT = "const e = document.querySelector('#prediction-readout'); return e ? e.textContent : null;"


def _browser() -> tuple[str, str]:
    chrome = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        pytest.skip(
            "headless Chromium not installed: needs `chromium` and `chromedriver` on PATH "
            "(Debian: apt-get install -y chromium chromium-driver; .ci/run does this)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium not installed (pip install -e '.[test]')")
    return chrome, driver


def _changed(readout: str | None, before: str) -> str | None:
    return readout if readout and readout != before else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(fn, timeout: float, what: str, step: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = fn()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def served_app(tmp_path_factory, tiny_assets, tmp_path):
    """``marimo run --headless`` on a free port, in the tiny project folder; yields the URL."""
    _browser()
    built = built_project(tmp_path_factory, tiny_assets)
    port = _free_port()
    app = tmp_path / "manipulate.py"  # a copy: marimo writes a __marimo__/ session cache next to the notebook
    shutil.copy(APP, app)
    with open(tmp_path / "marimo.log", "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "marimo",
                "run",
                str(app),
                "--headless",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-token",
            ],
            cwd=built.folder,
            env={**os.environ, "MANIPULATE_CONFIG": "config.yaml", "PYTHONPATH": str(REPO)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"marimo exited ({proc.returncode}):\n{(tmp_path / 'marimo.log').read_text()[-3000:]}")
        try:
            return urllib.request.urlopen(url, timeout=2).status == 200
        except OSError:
            return False

    try:
        _wait(up, 90, f"marimo to serve {url}")
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the process group this fixture started (marimo and its kernel)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_moving_a_slider_changes_the_shown_prediction(served_app, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.keys import Keys

    chrome, driver_path = _browser()
    options = Options()
    options.binary_location = chrome
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,2400",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(served_app)
        before = _wait(lambda: driver.execute_script(READOUT), 180, "the app's prediction readout")
        print("readout before:", before)
        assert "patches per predicted class" in before and "changed 0/16" in before
        driver.save_screenshot(str(tmp_path / "manipulate_app_before.png"))
        sliders = _wait(lambda: driver.execute_script(FIND_SLIDERS), 60, "the latent sliders")
        assert len(sliders) >= 2, f"expected the top latents' sliders, found {len(sliders)}"
        after, moved = before, None
        for i in range(len(sliders)):
            for key, name in ((Keys.END, "+1"), (Keys.HOME, "-1")):
                slider = driver.execute_script(FIND_SLIDERS)[i]  # re-find: the output re-renders
                start = slider.get_attribute("aria-valuenow")
                slider.click()
                slider.send_keys(key)
                try:
                    after = _wait(
                        lambda: _changed(driver.execute_script(READOUT), before),
                        20,
                        f"a new prediction after slider {i} -> {name}",
                    )
                except AssertionError:
                    continue
                moved = (i, name, start, driver.execute_script(FIND_SLIDERS)[i].get_attribute("aria-valuenow"))
                break
            if moved:
                break
        shot = tmp_path / "manipulate_app.png"
        driver.save_screenshot(str(shot))
        print("screenshot:", shot)
        print("readout after:", after, "| slider (index, to, from, now):", moved)
        assert moved is not None, f"no slider changed the prediction; readout stayed {before!r}"
        hash_before, hash_after = (re.search(r"map (\w+)", r).group(1) for r in (before, after))
        assert hash_before != hash_after
        assert not re.search(r"changed 0/16", after)
    finally:
        driver.quit()
