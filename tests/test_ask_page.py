"""The ask page (`python -m pipeline.ask serve`) in a real browser: headless Chromium (Debian's chromium and
chromium-driver, `bash envs/setup-browser.sh`) types a question, submits it, and the page shows the command's answers."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from test_ask import answered_pair
from workflow_runs import REPO, copy_tree

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the page stopped: {server.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {seconds} s")


def test_the_page_shows_the_commands_answers_in_a_real_browser(tmp_path, tiny_act_patch_run):
    pytest.importorskip("gradio", reason="the page extra: pip install -e '.[page]'")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the dev extra holds selenium")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium/chromedriver here: `bash envs/setup-browser.sh` installs Debian's")
    run = copy_tree(tiny_act_patch_run, tmp_path / "run")
    pair = answered_pair(run)
    env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    asked = ["--prompt", pair["input_text"], "--subject", pair["subject"],
             "--counterfactual-subject", pair["counterfactual_subject"]]
    command = subprocess.run([sys.executable, "-m", "pipeline.ask", "act_patch", "tiny_tiny", "--workdir", str(run),
                              *asked, "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    assert command.returncode == 0, command.stderr[-3000:]
    expected = [json.loads(line) for line in command.stdout.splitlines() if line.strip()]

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipeline.ask", "serve", "tiny_tiny", "--workdir", str(run),
                               "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    browser = None
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, server)
        browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)
        browser.get(url)
        wait = WebDriverWait(browser, 240)
        for elem_id, value in (("prompt", pair["input_text"]), ("subject", pair["subject"]),
                               ("counterfactual", pair["counterfactual_subject"])):
            box = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input"))
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(value)
        browser.find_element(By.CSS_SELECTOR, "#ask").click()
        cells = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heatmap td.cell"))
        browser.save_screenshot(str(tmp_path / "page.png"))
        shown = [(cell.get_attribute("title"), cell.get_attribute("data-agrees") == "true") for cell in cells]
        assert shown == [(row["answer"], row["agrees"]) for row in expected]
        agreement = browser.find_element(By.CSS_SELECTOR, "#agreement").text
        assert agreement.startswith(f"{sum(r['agrees'] for r in expected)} of {len(expected)} answers agree")
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)
