"""The web page in a real headless browser (Debian's chromium driven by Selenium): paste SMILES,
click score, find the table rows and the depictions, sort a column, download the CSV."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.scoring.conftest import SMILES
from tests.scoring.live import TOKEN, running_service

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000"]


@pytest.fixture()
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian's chromium and chromium-driver are needed (.ci/run installs them with apt-get)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    # The system driver, given explicitly: Selenium Manager never downloads a browser or a driver.
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_paste_score_sort_and_download(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    pasted = [*SMILES[:6], "not-a-smiles"]
    with running_service(site["model"], site["key"], "--site-store", str(site["store"]), "--mc-samples", "5") as url:
        browser.get(url + "/")
        assert browser.title == "fedmol scoring"
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.ID, "smiles").send_keys("\n".join(f"{s} cpd{i}" for i, s in enumerate(pasted)))
        browser.find_element(By.ID, "score").click()
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == len(pasted))
        assert "scored 6, rejected 1" in browser.find_element(By.ID, "status").text
        headers = [th.text.strip() for th in browser.find_elements(By.CSS_SELECTOR, "#results thead th")]
        for column in ("structure", "id", "canonical_smiles", "soluble", "soluble_std", "soluble_p1", "logS",
                       "logS_lower", "logS_upper"):
            assert column in headers, headers
        images = browser.find_elements(By.CSS_SELECTOR, "#results tbody img.depiction")
        assert len(images) == 6
        wait.until(lambda d: all(d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
                                 for img in images))
        rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        assert "unparsable" in rows[-1].text

        # Sort by the private task's prediction: descending after two clicks, the rejected row last.
        col = headers.index("soluble")
        header = browser.find_elements(By.CSS_SELECTOR, "#results thead th")[col]
        header.click()
        browser.find_elements(By.CSS_SELECTOR, "#results thead th")[col].click()
        cells = [r.find_elements(By.TAG_NAME, "td")[col].text for r in
                 browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
        values = [float(c) for c in cells if c]
        assert values == sorted(values, reverse=True) and cells[-1] == ""

        wait.until(ec.element_to_be_clickable((By.ID, "download"))).click()
        target = browser.downloads / "fedmol-predictions.csv"
        deadline = time.monotonic() + 30
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        frame = pd.read_csv(target)
        assert len(frame) == len(pasted) and set(frame["id"]) == {f"cpd{i}" for i in range(len(pasted))}
        assert "svg" not in frame.columns and frame["soluble"].notna().sum() == 6


def test_wrong_token_shows_the_error(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with running_service(site["model"], site["key"], "--mc-samples", "0") as url:
        browser.get(url + "/")
        browser.find_element(By.ID, "token").send_keys("wrong-token-0123456789abcdef")
        browser.find_element(By.ID, "smiles").send_keys("CCO")
        browser.find_element(By.ID, "score").click()
        WebDriverWait(browser, 30).until(lambda d: "error 401" in d.find_element(By.ID, "status").text)
        assert "invalid access token" in browser.find_element(By.ID, "status").text
