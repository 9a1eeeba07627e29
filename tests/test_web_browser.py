"""The web page in a real browser: headless chromium, its microphone a WAV file, against `serve --model tiny`.

Two browsers, whose microphones are a looped WAV: `talker` hears espeak-ng speech without a pause
long enough to be idle, whenever the session goes live (the file starts at getUserMedia, and the
persona's prompt takes as long as the machine makes it); `quiet` hears silence, so its sessions end
by the idle timeout. One server (one session at most, a short idle timeout, recording) serves the
module; the HTTPS-with-a-token test starts its own. Every wait is bounded and reads the page's own
state (`data-state`) and counters (`data-samples-played`...): on a busy machine a wait takes longer,
it does not flake. Screenshots of the idle, live and refused page go to out/web-screenshots/
(docs/web-live.png, in README, is one of them).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import soxr

from aimsvoice.audio import FRAME_SIZE, SAMPLE_RATE
from browser import WINDOW, chromium, number, page, shown, speech_wav, wait_state, wait_until, write_wav
from serve_helpers import Heard, config_message, heard_wav, running, s16, speechlike, tiny_config, until, ws_connect

pytest.importorskip("selenium", reason="the web page's tests need selenium: pip install -e '.[test]'")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

pytestmark = pytest.mark.realtime  # wall-clock time: run alone, never beside other tests (Makefile)

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "out" / "web-screenshots"
MIC_RATE = 48_000
SPOKEN = ("Hello coach. I want to run a marathon next spring, but I keep skipping my morning runs. "
          "Can you help me with a plan that I will actually follow?")
IDLE_S = 2.0  # the server's idle timeout: the quiet browser's sessions end by it, the talker's never
TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """The talker's microphone: espeak-ng speaking SPOKEN (~9 s), looped."""
    path = tmp_path_factory.mktemp("mic") / "speech.wav"
    return path, speech_wav(path, SPOKEN, MIC_RATE)


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("mic") / "silence.wav"
    write_wav(path, np.zeros(MIC_RATE, np.float32), MIC_RATE)
    with chromium(path) as driver:
        yield driver


@pytest.fixture(scope="module")
def talker(speech):
    with chromium(speech[0]) as driver:
        yield driver


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-records")


@pytest.fixture(scope="module")
def server(tiny_dir: Path, records: Path):
    with running(tiny_config(max_sessions=1, idle_timeout=IDLE_S, record=records)) as r:
        yield r


def screenshot(driver, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"no screenshot {path}"
    return path


def open_page(driver, url: str) -> None:
    driver.set_window_size(*WINDOW)
    driver.get(url)
    wait_until(driver, lambda d: d.get("state") in ("idle", "connecting", "live", "error"), "the page's first state", 20)


# -- the page at rest -------------------------------------------------------------------------


def test_the_page_offers_the_personas_and_fits_a_phone_in_the_dark(server, quiet) -> None:
    open_page(quiet, server.http + "/")
    personas = json.loads(server.get("/api/personas")[1])["personas"]
    wait_until(quiet, lambda d: quiet.execute_script("return document.getElementById('persona').options.length") == len(personas),
               "the persona list", 10)
    assert page(quiet)["state"] == "idle"
    picked = quiet.find_element(By.ID, "persona")
    assert picked.get_attribute("value") == "assistant" and quiet.find_element(By.ID, "call").is_enabled()
    assert "Voice" in quiet.find_element(By.ID, "persona-about").text
    screenshot(quiet, "idle")

    # A phone in dark mode: nothing wider than the screen, the system's colours.
    quiet.set_window_size(390, 844)
    quiet.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    try:
        wait_until(quiet, lambda d: quiet.execute_script(
            "return getComputedStyle(document.body).backgroundColor") == "rgb(18, 21, 26)", "dark colours", 5)
        overflow = quiet.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
        screenshot(quiet, "idle-phone-dark")
    finally:
        quiet.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        quiet.set_window_size(*WINDOW)


def test_the_jitter_buffer_and_the_resampler_in_the_browser(server, quiet) -> None:
    """The playback policy (jitter.js) on a virtual clock, and the fallback resampler, as the worklets run them."""
    open_page(quiet, server.http + "/")
    result = quiet.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        Promise.all([import('./static/jitter.js'), import('./static/resampler.js')]).then(([{JitterBuffer}, {Resampler}]) => {
          const frame = 1920, quantum = 128, rate = 24000;
          const ms = (x) => Math.round(x * rate / 1000);
          // A sender one frame per 80 ms on its own clock (skew), a 400 ms stall at 3 s then the burst.
          function run(skew, seconds, stall) {
            const j = new JitterBuffer({lead: ms(60), max: ms(240), window: ms(1000), slack: ms(20)});
            const out = new Float32Array(quantum);
            let pushed = 0, maxDepth = 0, nextSend = 0, t = 0, afterBurst = [];
            const pcm = new Float32Array(frame).fill(0.25);
            for (let q = 0; q < seconds * rate / quantum; q++, t += quantum) {
              while (nextSend <= t) {
                if (stall && nextSend >= 3 * rate && t < 3.4 * rate) break;  // held back, then sent at once
                j.push(pcm); pushed += frame; nextSend += frame / skew;
              }
              j.pull(out);
              maxDepth = Math.max(maxDepth, j.depth);
              if (stall && t > 3.4 * rate) afterBurst.push([t - 3.4 * rate, j.depth]);
            }
            const settled = afterBurst.filter(([dt]) => dt > 1.5 * rate).map(([, d]) => d);
            return {pushed, played: j.played, dropped: j.dropped, held: j.n, underruns: j.underruns, maxDepth,
                    settledMax: settled.length ? Math.max(...settled) : null};
          }
          function tone(inRate, outRate, hz) {
            const r = new Resampler(inRate, outRate), n = inRate, x = new Float32Array(n), out = [];
            for (let i = 0; i < n; i++) x[i] = 0.5 * Math.sin(2 * Math.PI * hz * i / inRate);
            for (let i = 0; i < n; i += 128) out.push(...r.process(x.subarray(i, i + 128)));
            const tail = out.slice(out.length >> 1);
            return {length: out.length, rms: Math.sqrt(tail.reduce((a, v) => a + v * v, 0) / tail.length)};
          }
          done({
            steady: run(1.0, 10, false), fast: run(1.01, 60, false), slow: run(0.99, 60, false), stall: run(1.0, 8, true),
            down: tone(48000, 24000, 1000), alias: tone(48000, 24000, 15000), up: tone(24000, 48000, 1000),
          });
        }).catch((e) => done({error: String(e)}));
        """
    )
    assert "error" not in result, result
    limit = 24 * 240  # 240 ms at 24 kHz
    for name in ("steady", "fast", "slow", "stall"):
        run_ = result[name]
        assert run_["maxDepth"] <= limit, (name, run_)
        assert run_["played"] + run_["dropped"] + run_["held"] == run_["pushed"], (name, run_)  # nothing lost unaccounted
    assert result["steady"]["underruns"] == 0 and result["steady"]["dropped"] == 0
    assert result["fast"]["dropped"] > 0 and result["fast"]["maxDepth"] <= limit  # a fast sender: late audio goes
    assert result["slow"]["underruns"] > 0  # a slow one: it runs dry now and then, and never builds up
    stall = result["stall"]
    assert stall["underruns"] >= 1 and stall["dropped"] > 0  # the burst after the stall is not queued...
    assert stall["settledMax"] <= 24 * (60 + 80 + 20)  # ...and the delay is back at its baseline within 1.5 s
    assert abs(result["down"]["length"] - 24000) <= 2 and abs(result["up"]["length"] - 48000) <= 4
    assert abs(result["down"]["rms"] - 0.5 / np.sqrt(2)) < 0.02 and abs(result["up"]["rms"] - 0.5 / np.sqrt(2)) < 0.03
    assert result["alias"]["rms"] < 0.05 * 0.5 / np.sqrt(2)  # above the new Nyquist: filtered, not folded down


# -- calls ------------------------------------------------------------------------------------


def test_a_full_server_is_shown_with_when_to_retry(server, quiet) -> None:
    async def hold_the_only_session(started: asyncio.Event, stop: asyncio.Event) -> None:
        heard = Heard()
        async with ws_connect(server.ws + "/ws") as ws:
            await ws.send(config_message(text_prompt="Hi."))
            await until(ws, heard, "ready")
            started.set()
            pcm = speechlike(10, 3)  # voice, so the idle timeout leaves it alone
            while not stop.is_set():
                for i in range(0, len(pcm), FRAME_SIZE):
                    await ws.send(s16(pcm[i : i + FRAME_SIZE]))
                    await asyncio.sleep(FRAME_SIZE / SAMPLE_RATE)
                    if stop.is_set():
                        break

    async def scenario() -> dict[str, str]:
        started, stop = asyncio.Event(), asyncio.Event()
        holder = asyncio.create_task(hold_the_only_session(started, stop))
        await asyncio.wait_for(started.wait(), 30)
        try:
            await asyncio.to_thread(open_page, quiet, server.http + "/")
            await asyncio.to_thread(wait_until, quiet, lambda d: d.get("state") == "idle" and quiet.find_element(
                By.ID, "call").is_enabled(), "the Connect button", 10)
            await asyncio.to_thread(quiet.find_element(By.ID, "call").click)
            return await asyncio.to_thread(wait_state, quiet, "refused", 20)
        finally:
            stop.set()
            await asyncio.wait_for(holder, 10)

    data = asyncio.run(asyncio.wait_for(scenario(), 90))
    detail = quiet.find_element(By.ID, "state-detail").text
    assert "full (1 session at once)" in detail and "Try again in" in detail, shown(quiet)
    assert 1 <= int(data["retryAfterS"]) <= 60
    assert quiet.find_element(By.ID, "call").text == "Connect"
    screenshot(quiet, "refused")
    wait_for_no_session(server)


def test_a_kiosk_link_connects_the_server_hears_the_microphone_and_the_agent_plays(server, talker, records, speech) -> None:
    open_page(talker, server.http + "/?persona=headcoach&connect=1")
    live = wait_state(talker, "live", 60)
    assert talker.find_element(By.ID, "persona").get_attribute("value") == "headcoach"
    # The agent's audio plays (counted by the playback worklet), its words appear, the round trip is measured.
    data = wait_until(talker, lambda d: number(d, "samplesPlayed") >= SAMPLE_RATE and number(d, "textPieces") > 0
                      and d.get("rttMs") and number(d, "samplesSent") >= 3 * SAMPLE_RATE,
                      "a second of the agent played, words, a round trip and 3 s of the microphone sent", 45)
    assert talker.find_element(By.ID, "words").text.strip()
    assert 0 < float(data["rttMs"]) < 5000
    screenshot(talker, "live")
    talker.find_element(By.ID, "call").click()
    ended = wait_state(talker, "ended", 15)
    assert ended["endReason"] == "client-ended" and talker.find_element(By.ID, "call").text == "Connect"
    played, received = number(ended, "samplesPlayed"), number(ended, "samplesReceived")
    assert received - SAMPLE_RATE <= played + number(ended, "samplesDropped") <= received  # but the last of it, in the buffer

    # The server heard the WAV: its recording of the session holds the microphone's speech.
    user = recording(records, live["session"])
    assert matched_windows(user, speech[1]) >= 5, "the recording does not hold the microphone's speech"
    wait_for_no_session(server)


def test_a_silent_user_is_ended_by_the_idle_timeout_and_told_why(server, quiet) -> None:
    open_page(quiet, server.http + "/")
    wait_until(quiet, lambda d: quiet.find_element(By.ID, "call").is_enabled(), "the Connect button", 10)
    quiet.find_element(By.ID, "call").click()
    live = wait_state(quiet, "live", 60)
    ended = wait_state(quiet, "ended", 30)
    assert ended["endReason"] == "idle-timeout", shown(quiet)
    assert "idle timeout" in quiet.find_element(By.ID, "state-detail").text
    assert number(ended, "samplesSent") > 0 and live["session"] == ended["session"]
    wait_for_no_session(server)


def test_https_with_a_token_asked_once_and_the_keyboard(tiny_dir: Path, quiet, tmp_path: Path, monkeypatch) -> None:
    from aimsvoice.server.tls import resolve_tls

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    tls = resolve_tls("self-signed")
    (tmp_path / "token").write_text(TOKEN + "\n")
    with running(tiny_config(token_file=tmp_path / "token", max_sessions=1), tls=tls) as r:
        assert r.http.startswith("https://")
        open_page(quiet, r.http + "/")
        wait_until(quiet, lambda d: quiet.find_element(By.ID, "token-form").is_displayed(), "the token form", 10)
        assert quiet.execute_script("return window.isSecureContext") is True
        token = quiet.find_element(By.ID, "token")
        assert quiet.switch_to.active_element == token  # focused: type and press Enter
        token.send_keys("not the token" + Keys.ENTER)
        wait_until(quiet, lambda d: "not accepted" in quiet.find_element(By.ID, "token-problem").text, "a wrong token said so", 10)
        quiet.switch_to.active_element.send_keys(TOKEN + Keys.ENTER)
        wait_until(quiet, lambda d: not quiet.find_element(By.ID, "token-form").is_displayed(), "the token accepted", 10)
        assert quiet.execute_script("return sessionStorage.getItem('aimsvoice-token')") == TOKEN
        quiet.refresh()  # asked once: kept for the tab
        wait_until(quiet, lambda d: quiet.find_element(By.ID, "call").is_enabled(), "the page, with no token asked", 10)
        assert not quiet.find_element(By.ID, "token-form").is_displayed()

        # Keyboard only: a short prompt of one's own, Connect with Enter, Esc hangs up.
        quiet.find_element(By.CSS_SELECTOR, "details summary").send_keys(Keys.ENTER)
        quiet.find_element(By.ID, "text-prompt").send_keys("You are brief.")
        quiet.find_element(By.ID, "call").send_keys(Keys.ENTER)
        wait_state(quiet, "live", 45)
        assert quiet.find_element(By.ID, "call").text == "Hang up"
        quiet.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        ended = wait_state(quiet, "ended", 15)
        assert ended["endReason"] == "client-ended" and "You hung up" in quiet.find_element(By.ID, "state-detail").text


# -- helpers ----------------------------------------------------------------------------------


def wait_for_no_session(server, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while server.health()["sessions_active"]:
        assert time.monotonic() < deadline, "a session outlived its client"
        time.sleep(0.05)


def recording(records: Path, session_id: str, timeout: float = 15.0) -> np.ndarray:
    """The user's channel (float32, 24 kHz) of the session's recording, once written."""
    deadline = time.monotonic() + timeout
    while not (found := list(records.glob(f"*-{session_id}.json"))):
        assert time.monotonic() < deadline, f"no recording of {session_id}"
        time.sleep(0.05)
    return heard_wav(found[0].with_suffix(".wav")).astype(np.float32) / 32768


def matched_windows(user: np.ndarray, mic: np.ndarray, window: int = 4800, threshold: float = 0.5) -> int:
    """How many voiced 200 ms windows of what the server heard match the microphone's (looped) file,
    at one place in it give or take the frames the server filled with silence or shed.

    The browser's noise suppression and gain control reshape the audio, and a late frame shifts the
    rest by 80 ms: so each window is matched on its own (normalized cross-correlation with the file),
    and the matches must agree on where in the file the session started."""
    looped = soxr.resample(mic, MIC_RATE, SAMPLE_RATE).astype(np.float64)
    period = len(looped)
    reference = np.concatenate([looped, looped])  # a window may span the loop's seam
    energy = np.concatenate([[0.0], np.cumsum(reference**2)])
    e = energy[window:] - energy[:-window]
    size = 1 << int(np.ceil(np.log2(len(reference) + window)))
    spectrum = np.fft.rfft(reference, size)
    offsets = []
    for start in range(0, len(user) - window, window):
        x = user[start : start + window].astype(np.float64)
        if np.sqrt(np.mean(x**2)) < 0.01:
            continue
        xc = np.fft.irfft(spectrum * np.conj(np.fft.rfft(x, size)), size)[: len(reference) - window + 1]
        voiced = e > 0.1 * np.dot(x, x)  # compare with the file's speech, not its near-silence
        ncc = np.where(voiced, xc / np.sqrt(np.maximum(e, 1e-12) * np.dot(x, x)), 0.0)
        best = int(np.argmax(ncc))
        if ncc[best] >= threshold:
            offsets.append((best - start) % period)
    if not offsets:
        return 0

    def distance(a: int, b: int) -> int:
        return min((a - b) % period, (b - a) % period)

    anchor = min(offsets, key=lambda o: sum(distance(o, p) for p in offsets))  # the medoid, on the loop's circle
    return sum(distance(o, anchor) <= 8 * FRAME_SIZE for o in offsets)
