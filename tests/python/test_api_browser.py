"""The demo page in a real browser (Debian's chromium + chromium-driver,
headless, via selenium): submit a prompt, watch the progress bar move, wait
for the image element to show a loaded PNG; live previews loading under the
progress bar before the image; cancel; recent jobs. Screenshots go to
out/browser/ (and the test's tmp dir)."""
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


def test_demo_page_shows_previews_before_the_image(make_server, browser, tmp_path):
    s = make_server(["--workers", "1", "--previews", "2"])
    browser.get(s.url + "/")
    # record every load of the preview and of the final image, with the time
    # and whether the preview was on screen (the page has no test hooks)
    browser.execute_script("""
        window.__loads = [];
        for (const id of ['preview-image', 'result-image']) {
            const img = document.getElementById(id);
            img.addEventListener('load', () => setTimeout(() => window.__loads.push({
                id: id, t: performance.now(), w: img.naturalWidth, h: img.naturalHeight,
                shown: getComputedStyle(img).display !== 'none', src: img.src})));
        }""")
    fill_and_submit(browser, "a living room with large windows", "256x256", 60)
    wait_for(browser, """
        const img = document.getElementById('result-image');
        return img.style.display === 'block' && img.complete && img.naturalWidth > 0;""")
    loads = browser.execute_script("return window.__loads")
    previews = [l for l in loads if l["id"] == "preview-image"]
    finals = [l for l in loads if l["id"] == "result-image"]
    assert previews, loads
    assert finals and all(p["t"] < finals[0]["t"] for p in previews), loads
    assert all(p["w"] == 256 and p["h"] == 256 and p["shown"] for p in previews), previews
    assert all("/preview?step=" in p["src"] for p in previews), previews
    steps = [int(p["src"].rsplit("=", 1)[1]) for p in previews]
    assert steps == sorted(set(steps)), steps
    # done: the preview makes way for the image
    assert browser.execute_script(
        "return getComputedStyle(document.getElementById('preview-image')).display") == "none"
    screenshot(browser, tmp_path, "demo-previewed.png")
    violations = [e["message"] for e in browser.get_log("browser")
                  if "Content Security Policy" in e.get("message", "")]
    assert not violations, violations


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
    s = make_server(["--workers", "1", "--threads", "1"])  # slow enough on any CPU
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


def test_demo_page_says_random_weights(make_server, browser, tmp_path):
    """The default model of `make run` is random weights: the page says so
    plainly (issue 23), from /healthz's notice."""
    s = make_server(["--workers", "1"])
    assert "random weights" in s.get("/healthz").json()["notice"]
    browser.get(s.url + "/")
    text = wait_for(browser, """
        const n = document.getElementById('notice');
        return !n.hidden && n.textContent;""")
    assert "random weights" in text and "noise" in text and "Real models" in text, text
    screenshot(browser, tmp_path, "demo-random-notice.png")


def test_demo_page_restyles_a_photo_with_a_painted_mask(make_server, browser, tmp_path):
    """Choose a photo, paint a mask over part of it, set the strength: the page uploads the
    photo and the mask (POST /v1/uploads), the job is inpainting with them, and the result
    keeps the unpainted part of the photo."""
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    s = make_server(["--workers", "1"])
    photo = tmp_path / "room.png"
    Image.new("RGB", (128, 96), (30, 160, 90)).save(photo)
    browser.get(s.url + "/")
    browser.find_element(By.ID, "prompt").clear()
    browser.find_element(By.ID, "prompt").send_keys("a red sofa")
    browser.find_element(By.ID, "steps").clear()
    browser.find_element(By.ID, "steps").send_keys("4")
    browser.find_element(By.ID, "photo").send_keys(str(photo))
    wait_for(browser, "return document.getElementById('photo-box').style.display === 'block'")
    assert browser.execute_script("return document.getElementById('size').value") == "auto"
    canvas = browser.find_element(By.ID, "photo-canvas")
    w = canvas.size["width"]
    # a drag over the left part of the photo (offsets from the canvas centre)
    ActionChains(browser).move_to_element_with_offset(canvas, -w // 3, -10).click_and_hold() \
        .move_by_offset(0, 20).move_by_offset(5, 0).release().perform()
    assert "repainted" in browser.find_element(By.ID, "mask-note").text
    browser.execute_script("const r = document.getElementById('strength'); r.value = '0.8';"
                           "r.dispatchEvent(new Event('input'));")
    assert browser.find_element(By.ID, "strength-value").text == "0.80"
    browser.find_element(By.ID, "submit").click()
    wait_for(browser, """
        const img = document.getElementById('result-image');
        return img.style.display === 'block' && img.complete && img.naturalWidth > 0;""")
    screenshot(browser, tmp_path, "demo-inpainting.png")
    jobs = s.get("/v1/jobs?limit=1").json()["jobs"]
    p = jobs[0]["params"]
    assert p["init_image"].startswith("upl_") and p["mask"].startswith("upl_"), p
    assert p["strength"] == 0.8 and p["keep_unmasked"] is True, p
    assert (p["width"], p["height"]) == (64, 64)  # 4:3 at the tiny model's 64: 64x48 -> 64
    out = Image.open(__import__("io").BytesIO(s.get(f"/v1/jobs/{jobs[0]['id']}/image").content))
    assert out.convert("RGB").getpixel((63, 10)) == (30, 160, 90)  # the right edge: kept
    violations = [e["message"] for e in browser.get_log("browser")
                  if "Content Security Policy" in e.get("message", "")]
    assert not violations, violations
