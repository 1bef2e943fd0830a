"""The labelling page in a real headless browser: Debian's chromium driven by Selenium through
Debian's chromedriver (pointed at explicitly: Selenium Manager never runs, nothing is
downloaded). Label 20 frames with the keyboard across a kill -9 of the server and a restart,
undo one, check the manifest on disk after each step; a second server and a change made by
another program are refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile

import pytest

from animefaces.label.store import LabelStore

from _labeldata import LabelServer, read_rows, unlabelled

CHROMEDRIVER = "/usr/bin/chromedriver"


def _browser():
    chromium = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
    if chromium is None or not shutil.which(CHROMEDRIVER):
        pytest.fail("the labelling page test needs Debian's chromium and chromium-driver "
                    f"(chromium: {chromium or 'missing'}, {CHROMEDRIVER}: "
                    f"{'found' if shutil.which(CHROMEDRIVER) else 'missing'}); install them with: "
                    "apt-get install -y chromium chromium-driver (test.sh does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the labelling page test needs Selenium: pip install -e '.[test]'")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1300,900", f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


@pytest.fixture
def driver():
    d = _browser()
    yield d
    d.quit()


def _shown(d) -> tuple[str, str]:
    """(row index, manifest path) of the frame the page shows."""
    from selenium.webdriver.common.by import By

    return (d.find_element(By.ID, "frame").get_attribute("data-i"),
            d.find_element(By.ID, "frame-img").get_attribute("alt"))


def _settled(d, *, changed_from=None, timeout=45):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ok(d):
        body = d.find_element(By.TAG_NAME, "body")
        i = d.find_element(By.ID, "frame").get_attribute("data-i")
        return body.get_attribute("data-pending") == "0" and i and i != changed_from

    WebDriverWait(d, timeout).until(ok)


def _press(d, key):
    from selenium.webdriver.common.by import By

    d.find_element(By.TAG_NAME, "body").send_keys(key)


def _label_with_keys(d, truth, n) -> list[str]:
    done = []
    for _ in range(n):
        i, path = _shown(d)
        _press(d, "f" if truth[path] == "face" else "n")
        _settled(d, changed_from=i)
        done.append(path)
    return done


def _labelled(manifest):
    return {r["path"]: r["label"] for r in read_rows(manifest) if r["label"]}


def test_label_twenty_frames_with_the_keyboard_across_a_crash(tmp_path, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    m, truth = unlabelled(tmp_path / "data")
    srv = LabelServer(m, tmp_path / "features", every=5)
    try:
        driver.get(srv.url)
        _settled(driver)
        first = _label_with_keys(driver, truth, 12)
        assert _labelled(m) == {p: truth[p] for p in first}      # on disk as given
        killed = srv.url
        srv.kill()                                                 # kill -9 mid-way
        assert _labelled(m) == {p: truth[p] for p in first}      # nothing lost
        srv = LabelServer(m, tmp_path / "features", every=5)
        driver.get(srv.url)
        _settled(driver)
        # back and forward: the arrows walk the frames, nothing is written
        i0, _ = _shown(driver)
        _press(driver, Keys.ARROW_RIGHT)
        _settled(driver, changed_from=i0)
        _press(driver, Keys.ARROW_LEFT)
        _settled(driver)
        assert _labelled(m) == {p: truth[p] for p in first}
        more = _label_with_keys(driver, truth, 8)
        got = _labelled(m)
        assert len(got) == 20 and got == {p: truth[p] for p in first + more}
        rows = read_rows(m)
        assert all(r["picked"] in ("random", "uncertain", "disagreement", "browse")
                   for r in rows if r["label"])
        assert all(r["labelled_at"] for r in rows if r["label"])
        # Z: the last label is taken back, on disk, and its frame is shown again
        _press(driver, "z")
        WebDriverWait(driver, 45).until(lambda d: len(_labelled(m)) == 19)
        _settled(driver)
        assert more[-1] not in _labelled(m)
        assert _shown(driver)[1] == more[-1]
        WebDriverWait(driver, 30).until(lambda d: "19 / 60 labelled" in
                                        d.find_element(By.ID, "progress-text").text)
        # the grid view shows the queue; a click opens a frame
        _press(driver, "g")
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#grid .cell"))
        cell = driver.find_elements(By.CSS_SELECTOR, "#grid .cell")[1]
        want = cell.get_attribute("data-i")
        cell.click()
        WebDriverWait(driver, 30).until(lambda d: _shown(d)[0] == want)
        assert driver.find_element(By.ID, "grid-view").is_displayed() is False
        # every request went to this server; the console is clean
        origins = driver.execute_script(
            "return performance.getEntriesByType('resource').map(function (e) { return e.name; })")
        assert origins and all(o.startswith(srv.url) for o in origins), origins
        # (the page of the killed server may have polled it once before we left it)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                  and not (killed in e["message"] and "ERR_CONNECTION_REFUSED" in e["message"])]
        assert not errors, errors

        # A second server on the same manifest is refused, naming the first.
        second = subprocess.run([sys.executable, "-m", "animefaces.cli", "label", str(m),
                                 "--backbone", "tiny", "--weights", "random", "-q"],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert second.returncode == 2 and "already open for labelling" in second.stderr
        assert srv.url in second.stderr
        # Another program writes the manifest: the page's next label is refused, not written.
        LabelStore(m).set_label(int(want), "unsure", picked="browse")
        theirs = m.read_bytes()
        _press(driver, "f")
        WebDriverWait(driver, 45).until(lambda d: d.find_element(By.ID, "banner").is_displayed())
        text = driver.find_element(By.ID, "banner-text").text
        assert "changed on disk by another program" in text and "nothing was written" in text
        assert m.read_bytes() == theirs
        _press(driver, "n")  # still refused: the page waits for a reload
        assert m.read_bytes() == theirs
    finally:
        srv.stop()
