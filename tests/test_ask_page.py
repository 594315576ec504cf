"""The ask page (`python -m pipeline.ask serve`) in a real browser: headless Chromium (Debian's chromium and
chromium-driver, `bash envs/setup-browser.sh`) types a question, submits it, and the page shows the command's answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from browser import page_in_chromium, type_into
from test_ask import answered_pair
from workflow_runs import REPO, copy_tree

pytestmark = pytest.mark.slow


def test_the_page_shows_the_commands_answers_in_a_real_browser(tmp_path, tiny_act_patch_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run = copy_tree(tiny_act_patch_run, tmp_path / "run")
    pair = answered_pair(run)
    env = {"HF_HUB_OFFLINE": "1", "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    asked = ["--prompt", pair["input_text"], "--subject", pair["subject"],
             "--counterfactual-subject", pair["counterfactual_subject"]]
    command = subprocess.run([sys.executable, "-m", "pipeline.ask", "act_patch", "tiny_tiny", "--workdir", str(run),
                              *asked, "--json"], cwd=REPO, env=env, capture_output=True, text=True)
    assert command.returncode == 0, command.stderr[-3000:]
    expected = [json.loads(line) for line in command.stdout.splitlines() if line.strip()]

    serve = [sys.executable, "-m", "pipeline.ask", "serve", "tiny_tiny", "--workdir", str(run)]
    with page_in_chromium(serve, env, REPO) as browser:
        wait = WebDriverWait(browser, 240)
        for elem_id, value in (("prompt", pair["input_text"]), ("subject", pair["subject"]),
                               ("counterfactual", pair["counterfactual_subject"])):
            type_into(browser, wait, elem_id, value)
        browser.find_element(By.CSS_SELECTOR, "#ask").click()
        cells = wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#heatmap td.cell"))
        browser.save_screenshot(str(tmp_path / "page.png"))
        shown = [(cell.get_attribute("title"), cell.get_attribute("data-agrees") == "true") for cell in cells]
        assert shown == [(row["answer"], row["agrees"]) for row in expected]
        agreement = browser.find_element(By.CSS_SELECTOR, "#agreement").text
        assert agreement.startswith(f"{sum(r['agrees'] for r in expected)} of {len(expected)} answers agree")
        assert (tmp_path / "page.png").stat().st_size > 10_000
