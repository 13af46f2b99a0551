"""The demo page in a real browser (Debian's chromium + chromium-driver,
headless, via selenium): submit a prompt, watch the progress bar move, wait
for the image element to show a loaded PNG; cancel; recent jobs. Screenshots
go to out/browser/ (and the test's tmp dir)."""
import os
import shutil
import time

import pytest

from conftest import ROOT

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")


def chromium_paths():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return browser, driver


@pytest.fixture
def browser():
    binary, driver = chromium_paths()
    if not binary or not driver:
        pytest.skip("chromium / chromium-driver not installed (apt: chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = binary
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1200,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console, for CSP reports
    b = webdriver.Chrome(service=Service(driver), options=opts)
    b.set_page_load_timeout(30)
    yield b
    b.quit()


def screenshot(b, tmp_path, name):
    out = os.path.join(ROOT, "out", "browser")
    os.makedirs(out, exist_ok=True)
    b.save_screenshot(os.path.join(out, name))
    b.save_screenshot(str(tmp_path / name))


def wait_for(b, script, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = b.execute_script(script)
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def fill_and_submit(b, prompt, size, steps):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    b.find_element(By.ID, "prompt").clear()
    b.find_element(By.ID, "prompt").send_keys(prompt)
    Select(b.find_element(By.ID, "size")).select_by_value(size)
    b.find_element(By.ID, "steps").clear()
    b.find_element(By.ID, "steps").send_keys(str(steps))
    # record every value the progress bar takes
    b.execute_script("""
        window.__progress = [];
        const bar = document.getElementById('progress');
        new MutationObserver(() => window.__progress.push(Number(bar.getAttribute('aria-valuenow'))))
            .observe(bar, {attributes: true, attributeFilter: ['aria-valuenow']});
    """)
    b.find_element(By.ID, "submit").click()


def test_demo_page_generates_an_image(make_server, browser, tmp_path):
    s = make_server(["--workers", "1"])
    browser.get(s.url + "/")
    assert browser.title == "easel"
    fill_and_submit(browser, "a watercolor fox", "256x256", 40)
    wait_for(browser, """
        const img = document.getElementById('result-image');
        return img.style.display === 'block' && img.complete && img.naturalWidth > 0;""")
    size = browser.execute_script(
        "const i = document.getElementById('result-image'); return [i.naturalWidth, i.naturalHeight];")
    assert size == [256, 256]
    src = browser.execute_script("return document.getElementById('result-image').src")
    ctype = browser.execute_script(
        "return fetch(arguments[0]).then(r => r.headers.get('Content-Type'));", src)
    assert ctype == "image/png"
    values = browser.execute_script("return window.__progress")
    assert values[-1] == 100
    assert any(0 < v < 100 for v in values), values  # it moved, not just jumped to the end
    assert values == sorted(values)
    assert "completed" in browser.execute_script("return document.getElementById('status').textContent")
    # the job shows up in the recent list
    wait_for(browser, "return document.querySelectorAll('#recent li').length >= 1")
    screenshot(browser, tmp_path, "demo-completed.png")
    # it all ran under the page's strict Content-Security-Policy (hashes, no
    # 'unsafe-inline'): the browser reported no violation, and the stylesheet applied
    violations = [e["message"] for e in browser.get_log("browser")
                  if "Content Security Policy" in e.get("message", "")]
    assert not violations, violations
    assert browser.execute_script(
        "return getComputedStyle(document.querySelector('section.wide')).gridColumnStart") == "1"


def test_demo_page_cancel(make_server, browser, tmp_path):
    s = make_server(["--workers", "1"])
    browser.get(s.url + "/")
    fill_and_submit(browser, "a very slow picture", "512x512", 150)
    wait_for(browser, "return window.__progress.some(v => v > 0)")
    from selenium.webdriver.common.by import By
    browser.find_element(By.ID, "cancel").click()
    wait_for(browser, "return document.getElementById('status').textContent.startsWith('canceled')")
    screenshot(browser, tmp_path, "demo-canceled.png")
    listing = s.get("/v1/jobs").json()["jobs"]
    assert listing[0]["status"] == "canceled"


def test_demo_page_polls_without_sse_and_gives_up_plainly(make_server, browser, tmp_path):
    s = make_server(["--workers", "1"])
    browser.get(s.url + "/?poll_limit_ms=4000")
    browser.execute_script("window.EventSource = undefined;")  # an old browser: poll every 3 s
    fill_and_submit(browser, "a slow picture, polled", "512x512", 150)
    text = wait_for(browser, """
        const t = document.getElementById('status').textContent;
        return t.includes('goes on in the background') ? t : null;""", timeout=30)
    assert "Check again" in text
    values = browser.execute_script("return window.__progress")
    assert any(v > 0 for v in values), values  # a poll saw progress before giving up
    screenshot(browser, tmp_path, "demo-gave-up.png")
    job = s.get("/v1/jobs").json()["jobs"][0]
    assert job["status"] == "processing"  # still going on the server
    s.post(f"/v1/jobs/{job['id']}/cancel")
