"""A real browser for the web page's tests: Debian's chromium, headless, through its chromium-driver.

`chromium(fake_mic)` starts one headless chromium whose microphone is a WAV file (Chrome's fake
capture device: the file from its start at each getUserMedia, looped), with media permission
granted, autoplay allowed and self-signed certificates accepted. Everything the tests wait for is read
from the page (`data-state` and the counters on the root element), with bounded waits that say
what the page showed when they ran out. scripts/system-deps.sh installs chromium and
chromium-driver (`make install` runs it).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
import wave
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

WINDOW = (720, 1000)  # the screenshots' size: a narrow desktop window
PAGE_LOAD_TIMEOUT_S = 30.0


def find_chromium() -> tuple[str, str]:
    """The chromium and chromedriver executables, or an assertion naming the fix."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or shutil.which("chromium.chromedriver")  # Debian's; Ubuntu's snap
    assert browser and driver, "the web page's tests need chromium and chromium-driver: run `bash scripts/system-deps.sh`"
    return browser, driver


@contextlib.contextmanager
def chromium(fake_mic: Path, window: tuple[int, int] = WINDOW) -> Iterator[Any]:
    """A headless chromium (a selenium WebDriver) hearing `fake_mic` (a WAV file, looped) as its microphone."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",  # containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--mute-audio",  # played through the page's graph all the same, just not to a sound card
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={fake_mic}",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-renderer-backgrounding",
        "--disable-background-timer-throttling",
        f"--window-size={window[0]},{window[1]}",
    ):
        options.add_argument(flag)
    options.accept_insecure_certs = True  # serve --ssl self-signed
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    driver.set_script_timeout(PAGE_LOAD_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def page(driver: Any) -> dict[str, str]:
    """The root element's data attributes: state and counters."""
    return driver.execute_script("return Object.assign({}, document.documentElement.dataset)")


def shown(driver: Any) -> str:
    """What the page says: its state line, its notice, and its console's last lines, for assertion messages."""
    text = driver.execute_script(
        "return [document.getElementById('state-label').textContent, document.getElementById('state-detail').textContent,"
        " document.getElementById('notice').textContent].join(' | ')"
    )
    with contextlib.suppress(Exception):
        text += "\nconsole: " + " / ".join(entry["message"] for entry in driver.get_log("browser")[-5:])
    return text


def wait_until(driver: Any, condition: Callable[[dict[str, str]], bool], what: str, timeout: float = 30.0) -> dict[str, str]:
    """Poll the page's data until `condition` holds; fail with what the page shows after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        data = page(driver)
        if condition(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not get to {what} within {timeout:g} s: {data}\n{shown(driver)}")
        time.sleep(0.1)


def wait_state(driver: Any, state: str, timeout: float = 30.0) -> dict[str, str]:
    return wait_until(driver, lambda d: d.get("state") == state, f"data-state={state}", timeout)


def number(data: dict[str, str], key: str) -> float:
    value = data.get(key) or "0"
    return float(value)


def speech_wav(path: Path, text: str, rate: int = 48_000) -> np.ndarray:
    """A 16-bit mono WAV of `text` spoken by espeak-ng at `rate`; returns its samples (float32)."""
    import soxr

    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True, capture_output=True, timeout=30)
    with wave.open(str(raw), "rb") as w:
        spoken = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768
        spoken_rate = w.getframerate()
    raw.unlink()
    pcm = soxr.resample(spoken, spoken_rate, rate).astype(np.float32)
    voiced = np.flatnonzero(np.abs(pcm) > 0.01)
    pcm = pcm[voiced[0] : voiced[-1] + 1]  # no silence at the ends: looped, it is one long stream of speech
    return write_wav(path, 0.5 * pcm / max(float(np.max(np.abs(pcm))), 1e-6), rate)


def write_wav(path: Path, pcm: np.ndarray, rate: int) -> np.ndarray:
    """`pcm` (float32 mono) as a 16-bit WAV file; returns it."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.round(pcm * 32767).astype("<i2").tobytes())
    return pcm
