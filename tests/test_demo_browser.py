"""The demo page in a real browser: Debian's Chromium, headless, driven by Playwright, fake microphone from a WAV.

Setup: `scripts/install-browser.sh` (run by scripts/test.sh) installs Chromium with apt; the `playwright` Python
package (dev extra) drives it through `executable_path`. Playwright never downloads a browser here. The test
skips only when Chromium cannot be installed (no root, no apt); it leaves a screenshot in test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from serverkit import running_server

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts"
STREAM_SECONDS = 3.0


def chromium_path() -> str | None:
    path = os.environ.get("FASTVC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:  # pytest run without scripts/test.sh: install now, as the test command would
        installer = subprocess.run([str(REPO_ROOT / "scripts" / "install-browser.sh")], capture_output=True,
                                   text=True, timeout=900)
        path = chromium_path()
        if path is None:
            reason = (installer.stderr.strip().splitlines() or ["no reason given"])[-1]
            pytest.skip(f"Chromium cannot be installed here: {reason}")
    return path


def chromium_flags(wav: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
            "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]


async def test_demo_streams_the_microphone_and_plays_the_converted_voice(chromium, audio_dir):
    async_api = pytest.importorskip("playwright.async_api", reason="the playwright package (dev extra)")
    wav = audio_dir / "en-counting-16k.wav"  # 3 s of speech (RMS 0.05), 16 kHz 16-bit mono; Chromium loops it
    ARTIFACTS_DIR.mkdir(exist_ok=True)
    async with running_server() as server, async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium, args=chromium_flags(wav))
        try:
            page = await browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            await page.goto(f"http://127.0.0.1:{server.port}/demo")
            await page.wait_for_function("!document.getElementById('start').disabled", timeout=10_000)
            assert await page.locator("#voice option").all_inner_texts() == ["default"]
            await page.click("#start")
            await page.wait_for_function("window.fastvcDemo.phase === 'streaming'", timeout=10_000)
            await page.wait_for_function(
                f"window.fastvcDemo.sentSamples >= {STREAM_SECONDS} * window.fastvcDemo.sampleRateHz",
                timeout=15_000)
            live = await page.evaluate("({...window.fastvcDemo, latenciesMs: window.fastvcDemo.latenciesMs.length})")
            latency_text = await page.inner_text("#latency")
            await page.click("#stop")
            await page.wait_for_function("window.fastvcDemo.phase === 'done'", timeout=10_000)
            await page.wait_for_function("document.querySelectorAll('#stats tr').length > 3", timeout=5_000)
            await page.screenshot(path=str(ARTIFACTS_DIR / "demo.png"), full_page=True)
            final = await page.evaluate("window.fastvcDemo")
            stats_text = await page.inner_text("#stats")
        finally:
            await browser.close()
    assert page_errors == [] and final["error"] is None
    # Converted audio came back and the jitter buffer played it: real energy, about as long as what was sent.
    assert live["receivedSamples"] > 0.5 * live["sentSamples"]
    played_rms = (final["playedEnergy"] / max(final["playedSamples"], 1)) ** 0.5
    assert final["playedSamples"] >= 2.0 * final["sampleRateHz"] and played_rms > 0.01  # speech came back, not silence
    # The live readout shows a block latency in ms, and the session's own stats appear at the end.
    assert re.fullmatch(r"\d+ ms", latency_text) and 0 < live["latencyMs"] < 5000
    assert final["stats"]["blocks"] > 0 and "blocks" in stats_text
    assert (ARTIFACTS_DIR / "demo.png").stat().st_size > 10_000
