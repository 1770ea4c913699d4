"""/docs in a real headless browser, on a machine without internet."""

from __future__ import annotations

from urllib.parse import urlsplit

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import browser

__all__ = ["browser"]


def test_docs_render_offline_and_try_it_out_uses_the_api_key(
    browser: WebDriver, api_url: str, api_key: str
) -> None:
    wait = WebDriverWait(browser, 30)
    # Given the API's /docs page open in Chromium
    browser.get(f"{api_url}/docs")
    # Then Swagger UI renders from the API's own assets, with an Authorize button
    authorize = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button.authorize")))
    assets = browser.execute_script(
        "return [...document.querySelectorAll('script[src], link[href]')].map(e => e.src || e.href)"
    )
    assert assets, "no assets on the page"
    assert {urlsplit(a).netloc for a in assets} == {urlsplit(api_url).netloc}, assets
    # When the API key is entered under Authorize
    authorize.click()
    field = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, ".modal-ux input")))
    field.send_keys(api_key)
    browser.find_element(By.CSS_SELECTOR, ".modal-ux button.authorize").click()
    browser.find_element(By.CSS_SELECTOR, ".modal-ux button.btn-done").click()
    # And "Try it out" runs GET /v1/batches
    browser.find_element(By.ID, "operations-batches-list_batches").click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button.try-out__btn"))).click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "button.execute"))).click()
    # Then the API answered 200 to the browser's authenticated request
    status = wait.until(
        ec.visibility_of_element_located(
            (By.CSS_SELECTOR, ".live-responses-table .response .response-col_status")
        )
    )
    assert status.text.strip().startswith("200"), browser.page_source[-2000:]
