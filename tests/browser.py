"""A page as a person meets it: the page's server in a subprocess and Debian's headless Chromium driven through its
chromedriver (selenium; `bash envs/setup-browser.sh` installs both). No browser is downloaded at run time."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest


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


@contextlib.contextmanager
def page_in_chromium(command: list[str], env: dict, cwd):
    """Start the page (`command`, given `--port` last), wait until it answers, and yield a headless Chromium
    (selenium's webdriver) at it; both are closed after. Skips where the page extra or the browser is missing."""
    pytest.importorskip("gradio", reason="the page extra: pip install -e '.[page]'")
    webdriver = pytest.importorskip("selenium.webdriver", reason="the dev extra holds selenium")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium/chromedriver here: `bash envs/setup-browser.sh` installs Debian's")
    port = free_port()
    server = subprocess.Popen([*command, "--port", str(port)], cwd=cwd, env=env, stdout=subprocess.PIPE,
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
        yield browser
    finally:
        if browser is not None:
            browser.quit()
        server.terminate()
        server.wait(timeout=30)


def type_into(browser, wait, elem_id: str, value) -> None:
    """Replace the text of a Gradio box (a textbox or a number) by `value`."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, f"#{elem_id} textarea, #{elem_id} input"))
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value))
