"""A real headless browser for the tests: Debian's Chromium driven by selenium.

`bin/browser` installs chromium and chromium-driver when they are missing, so nothing is
downloaded at test time (selenium's own driver manager is never used)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

ROOT = Path(__file__).resolve().parents[1]
# Headless Chromium as root in a container: no sandbox, no GPU, /tmp instead of /dev/shm.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,2000",
)


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), installed by bin/browser if needed."""
    out = subprocess.run(
        [str(ROOT / "bin" / "browser")], check=True, capture_output=True, text=True
    ).stdout.split()
    return out[0], out[1]


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    chromium, chromedriver = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
