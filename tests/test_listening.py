"""Listening report: loudness matching and the sign-test table by hand; the pages in headless Chromium.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` and the ``selenium``
package (``make test`` installs them when it can) and skip with one line otherwise. They
render reports of tiny checkpoints, load every player and image, click through the blind
test, save the answers through the page's download link and unblind them with
``launch/evaluate.py --listening-results ... --blind-key``. ``UNSHIFT_SCREENSHOT=PATH`` keeps
a screenshot of the report page there.
"""
import base64
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import ROOT
from gan.eval.evaluation import Example
from gan.eval.listening import (PEAK_CEILING_DB, ListeningReport, ListeningReportError, blind_order,
                                integrated_loudness, match_loudness, peak_db)
from gan.eval.listening_results import ListeningResultsError, format_preferences, preference_table, read_answers

sys.path.insert(0, str(ROOT / "launch"))
import evaluate  # noqa: E402
from helpers import IDENTITY, half_level_pairs, make_folder, tone_folder, write_checkpoint


def sine(db_peak: float, seconds: float = 2.0, hz: float = 997.0) -> np.ndarray:
    t = np.arange(int(48000 * seconds)) / 48000
    return (10 ** (db_peak / 20) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_loudness_of_a_sine_is_the_bs1770_reference():
    # BS.1770: a 0 dBFS 997 Hz sine in one channel reads -3.01 LKFS, so -20 dBFS reads -23.01; torchaudio's
    # K-weighting gives -23.05, inside EBU Tech 3341's +-0.1 LU
    assert integrated_loudness(sine(-20.0)) == pytest.approx(-23.01, abs=0.1)
    assert integrated_loudness(sine(-20.0, seconds=0.2)) == pytest.approx(integrated_loudness(sine(-20.0)), abs=0.01)
    assert math.isnan(integrated_loudness(np.zeros(48000))) and math.isnan(integrated_loudness(np.zeros(0)))


def test_match_loudness_equalises_and_lowers_the_target_instead_of_clipping():
    noise = (np.random.default_rng(0).standard_normal(96000) * 0.05).astype(np.float32)
    m = match_loudness({"a": noise, "b": 0.5 * noise})
    assert m.target == -23.0 and not m.lowered
    assert m.gain_db["b"] - m.gain_db["a"] == pytest.approx(20 * math.log10(2), abs=1e-3)
    for k, x in {"a": noise, "b": 0.5 * noise}.items():
        assert integrated_loudness(x * 10 ** (m.gain_db[k] / 20)) == pytest.approx(-23.0, abs=0.01)

    click = 0.01 * noise
    click[1000] = 1.0  # peak 0 dBFS over noise near -60 LUFS: at -23 LUFS it would peak far above full scale
    versions = {"a": noise, "click": click, "silence": np.zeros(96000, np.float32)}
    m = match_loudness(versions)
    lufs_click = integrated_loudness(click)
    assert m.lowered and m.target == pytest.approx(PEAK_CEILING_DB - (0.0 - lufs_click), abs=1e-9)
    assert peak_db(click * 10 ** (m.gain_db["click"] / 20)) == pytest.approx(PEAK_CEILING_DB, abs=1e-4)
    assert integrated_loudness(noise * 10 ** (m.gain_db["a"] / 20)) == pytest.approx(m.target, abs=0.01)
    assert m.gain_db["silence"] == 0.0 and all(peak_db(x * 10 ** (m.gain_db[k] / 20)) <= PEAK_CEILING_DB + 1e-6
                                               for k, x in versions.items())


def key_file(path, n, report_id="0123456789ab", x="degraded", y="enhanced A: runs/x (step 7)"):
    """The key of a blind report of ``n`` examples, odd ones played "xy" (A is X), even ones "yx"."""
    examples = {f"{i:016x}": {"example": i, "name": f"f{i}.wav", "order": "xy" if i % 2 else "yx"}
                for i in range(1, n + 1)}
    path.write_text(json.dumps({"format": "unshift-listening-key", "version": 1, "report_id": report_id, "seed": 0,
                                "page": "ab/index.html", "x": x, "y": y, "examples": examples}))
    return path


def answers_file(path, key, choices, **fields):
    """Answers to every example of ``key`` as its page saves them; ``choices`` "x" / "y" / "none" / None."""
    doc = json.loads(key.read_text())
    answers = []
    for (token, e), c in zip(doc["examples"].items(), choices, strict=True):
        a_is_x = e["order"] == "xy"
        letter = {"x": "A" if a_is_x else "B", "y": "B" if a_is_x else "A", "none": "none"}.get(c)
        answers.append({"example": e["example"], "name": e["name"], "token": token, "answer": letter})
    path.write_text(json.dumps({"format": "unshift-listening-answers", "version": 2, "report_id": doc["report_id"],
                                "listener": "", "saved": "2025-01-01T00:00:00Z", "answers": answers, **fields}))
    return path


def test_sign_test_table_by_hand(tmp_path):
    # two listeners, 6 examples: 8 prefer Y, 1 prefers X, 1 no difference, 2 unanswered: two-sided sign test on
    # 9 decided answers, P(k >= 8 or k <= 1 | n = 9, p = 1/2) = 2 * (9 + 1) / 2^9 = 0.0390625
    key = key_file(tmp_path / "ab.blind-key.json", 6)
    a = answers_file(tmp_path / "a.json", key, ["y", "y", "x", "y", "none", "y"])
    b = answers_file(tmp_path / "b.json", key, ["y", "y", "y", None, "y", None])
    row = preference_table([a, b], key)
    assert (row["n"], row["prefers_x"], row["prefers_y"], row["no_difference"]) == (10, 1, 8, 1)
    assert row["p"] == pytest.approx(20 / 512, abs=1e-12) and row["preferred"] == "y" and row["files"] == 2
    text = format_preferences(row)
    assert text.startswith("X = degraded  vs  Y = enhanced A: runs/x (step 7)  (2 answers files, report 0123456789ab)")
    assert "   10           1           8               1       0.03906" in text
    assert ("verdict: listeners prefer Y (enhanced A: runs/x (step 7)) over X (degraded) (8 of 9 decided answers, "
            "two-sided sign test p = 0.03906 < 0.05)") in text
    # 3 against 3: p = 1; no decided answers: p NaN
    row = preference_table([answers_file(tmp_path / "c.json", key, ["x", "y"] * 3)], key)
    assert row["p"] == 1.0 and row["preferred"] == "neither"
    assert "no significant preference" in format_preferences(row)
    row = preference_table([answers_file(tmp_path / "d.json", key, ["none", "none"] + [None] * 4)], key)
    assert math.isnan(row["p"]) and "no decided answers (2 of 2" in format_preferences(row)


def test_labels_come_from_the_key_never_from_the_answers(tmp_path):
    """Swapped X / Y labels in an answers file (as the first answers format carried them) credit the same version."""
    key = key_file(tmp_path / "ab.blind-key.json", 4)
    choices = ["y", "y", "y", "x"]
    honest = preference_table([answers_file(tmp_path / "a.json", key, choices)], key)
    swapped = preference_table([answers_file(tmp_path / "b.json", key, choices, x="enhanced A: runs/x (step 7)",
                                             y="degraded")], key)
    assert honest == swapped
    assert (swapped["x"], swapped["y"], swapped["prefers_x"], swapped["prefers_y"]) == (
        "degraded", "enhanced A: runs/x (step 7)", 1, 3)
    assert format_preferences(swapped).splitlines()[-1].startswith("verdict: no significant preference (3 of 4")


def test_foreign_or_malformed_answers_are_one_line_errors(tmp_path, capsys):
    key = key_file(tmp_path / "ab.blind-key.json", 2)
    other_key = key_file(tmp_path / "other.blind-key.json", 2, report_id="fedcba987654")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"rows": []}))
    answers_file(tmp_path / "foreign.json", other_key, ["x", "y"])
    for name, edit in (("unknown.json", lambda d: d["answers"][0].update(token="00000000deadbeef")),
                       ("moved.json", lambda d: d["answers"][0].update(token=d["answers"][1]["token"])),
                       ("twice.json", lambda d: d["answers"][1].update(d["answers"][0])),
                       ("short.json", lambda d: d["answers"].pop()),
                       ("v1.json", lambda d: d.update(version=1))):
        doc = json.loads(answers_file(tmp_path / name, key, ["x", "y"]).read_text())
        edit(doc)
        (tmp_path / name).write_text(json.dumps(doc))
    for name, words in (("bad.json", "not JSON"), ("other.json", "not a listening-test answers file"),
                        ("foreign.json", "of report fedcba987654, the blind key is of report 0123456789ab"),
                        ("unknown.json", "example 1: token '00000000deadbeef' is not in the blind key of report"),
                        ("moved.json", "example 1: its token is example 2's"),
                        ("twice.json", "example 1 is answered twice"),
                        ("short.json", "1 example(s) of report 0123456789ab missing (2)"),
                        ("v1.json", "version 1, this reader knows 2"),
                        ("missing.json", "cannot be read")):
        assert evaluate.main(["--listening-results", str(tmp_path / name), "--blind-key", str(key)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: answers ") and words in err and err.count("\n") == 1, err
    for argv, words in ((["--blind-key", str(tmp_path / "other.json")], "error: blind key "),
                        ([], "error: --listening-results needs --blind-key KEY: the key file the blind report wrote")):
        assert evaluate.main(["--listening-results", str(tmp_path / "foreign.json"), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(words) and err.count("\n") == 1, err
    doc = json.loads((tmp_path / "foreign.json").read_text())
    doc["answers"][0]["answer"] = "C"
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(ListeningResultsError, match="answer 'C'"):
        read_answers(tmp_path / "c.json")


def test_report_folder_holding_other_files_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert evaluate.main(["--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path), "--html",
                          str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --html {tmp_path / 'mine'}: holds other files (notes.txt); give a new or empty folder, " \
                  "or an earlier report to replace\n"
    with pytest.raises(SystemExit):
        evaluate.main(["--checkpoint", "x", "--data", str(tmp_path), "--blind"])
    assert "--blind needs --html DIR" in capsys.readouterr().err


def test_report_shows_the_gain_matched_input_and_what_lies_beyond_level(tmp_path, registry):  # noqa: F811
    """Input at half the level, the identity as model: the page's summary says all of the change is level (+100 %)
    and nothing lies beyond it; each example lists the gain-matched input's metrics and the oracle gain (+6.0 dB),
    and plays the same versions as before (the gain-matched input would sound as the degraded one)."""
    from html import unescape

    clean, deg = half_level_pairs(tmp_path)
    out = tmp_path / "report"
    assert evaluate.main(["--checkpoint", str(tmp_path / "a"), "--data", str(clean), "--degraded-dir", str(deg),
                          "--metrics", "lsd", "--html", str(out), "--quiet"]) == 0
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", (out / "index.html").read_text())).split())
    row = re.search(r"input gm input level output gm output beyond level lsd ((\S+ ){6}abs)", text)
    assert row.group(1).split() == ["0.6021", "0", "+100.0%", "0.6021", "0", "+0.0000", "abs"]  # 2 log10(2)
    assert text.count("gain-matched input A beyond level") == 2
    assert text.count("oracle gain of the input: 2 (+6.0 dB)") == 2
    assert "2 examples cannot reach p < 0.01" in text
    assert len(list((out / "audio").iterdir())) == 2 * 3  # clean, degraded, enhanced A


def blind_report(folder, seed, token_hex=None, n=4):
    """A blind page of ``n`` short examples (degraded vs checkpoint A's output) written without evaluating."""
    rng = np.random.default_rng(0)
    report = {"data": "data/heldout", "checkpoints": {"A": {"path": "runs/a", "step": 500}}}
    kwargs = {"token_hex": token_hex} if token_hex else {}
    writer = ListeningReport(folder, blind=True, seed=seed, **kwargs)
    for k in range(1, n + 1):
        clean = (0.1 * rng.standard_normal(9600)).astype(np.float32)
        ex = Example(f"f{k}.wav", "+12", clean, 0.5 * clean + 0.02 * rng.standard_normal(9600).astype(np.float32))
        writer.add(k, ex, {"A": 0.9 * clean}, rows=[])
    return writer.finish(report), json.loads(writer.key_path.read_text())


def counter_tokens():
    """A stand-in for ``secrets.token_hex``: 1, 2, 3, ... as hex of the asked length."""
    count = iter(range(1, 10**6))
    return lambda nbytes: f"{next(count):0{2 * nbytes}x}"


def test_blind_page_holds_nothing_the_order_follows_from(tmp_path):
    """Two blind reports with opposite orders in every example, drawing the same ids: the same page, byte for byte.

    So the page is a function of what the two share (names, loudness, the drawn tokens) and tells nothing of the
    order; the audio differs only in which letter names which file, and the files of an example are one size.
    """
    n = 4
    flipped = next(t for t in range(1, 1000) if all(blind_order(t, k) != blind_order(0, k) for k in range(1, n + 1)))
    page_1, key_1 = blind_report(tmp_path / "one", 0, counter_tokens(), n)
    page_2, key_2 = blind_report(tmp_path / "two", flipped, counter_tokens(), n)
    assert key_1["report_id"] == key_2["report_id"] and list(key_1["examples"]) == list(key_2["examples"])
    assert [e["order"] for e in key_1["examples"].values()] == [blind_order(0, k) for k in range(1, n + 1)]
    for e1, e2 in zip(key_1["examples"].values(), key_2["examples"].values()):
        assert {e1["order"], e2["order"]} == {"xy", "yx"}
    assert page_1.read_text() == page_2.read_text()
    data = json.loads(re.search(r'id="blind-data">(.*?)</script>', page_1.read_text()).group(1))
    assert set(data) == {"format", "version", "report_id", "examples"}
    assert [set(e) for e in data["examples"]] == [{"example", "name", "token"}] * n
    assert [e["token"] for e in data["examples"]] == list(key_1["examples"])  # the key is what unblinds a token
    for k in range(1, n + 1):  # the same files under swapped letters, one size and one time within an example
        one, two = ({t: folder / "audio" / f"{k:04d}_{t}.mp3" for t in ("ref", "a", "b")}
                    for folder in (tmp_path / "one", tmp_path / "two"))
        assert one["a"].read_bytes() == two["b"].read_bytes() and one["b"].read_bytes() == two["a"].read_bytes()
        assert one["a"].read_bytes() != one["b"].read_bytes()
        assert len({f.stat().st_size for f in one.values()}) == 1
        assert len({f.stat().st_mtime_ns for f in one.values()}) == 1
    # the real ids are drawn afresh (secrets.token_hex): not a function of the seed, the report or the order
    page_3, key_3 = blind_report(tmp_path / "three", 0, n=n)
    assert key_3["report_id"] != key_1["report_id"] and re.fullmatch(r"[0-9a-f]{12}", key_3["report_id"])
    assert all(re.fullmatch(r"[0-9a-f]{16}", t) for t in key_3["examples"]) and len(key_3["examples"]) == n
    assert key_3["report_id"] in page_3.read_text() and not set(key_3["examples"]) & set(key_1["examples"])


def test_blind_key_stays_out_of_the_report_folder(tmp_path, capsys):
    with pytest.raises(ListeningReportError, match="inside the report folder"):
        ListeningReport(tmp_path / "ab", blind=True, key_path=tmp_path / "ab" / "key.json")
    assert evaluate.main(["--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path), "--html", str(tmp_path),
                          "--blind", "--blind-key", str(tmp_path / "k.json")]) == 2
    assert "--blind-key" in capsys.readouterr().err and not (tmp_path / "k.json").exists()
    assert ListeningReport(tmp_path / "ab/", blind=True).key_path == tmp_path / "ab.blind-key.json"


# --------------------------------------------------------------------------- in the browser


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium through selenium, downloads allowed into a folder of its own."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed (pip install -e '.[dev]')")
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                "--window-size=1280,900"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=shutil.which("chromedriver")))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_script_timeout(60)
    driver.downloads = downloads
    yield driver
    driver.quit()


LOAD_AUDIO = """const done = arguments[arguments.length - 1];
Promise.all([...document.querySelectorAll('audio')].map(a => new Promise(resolve => {
  const report = () => resolve({src: a.getAttribute('src'), ready: a.readyState, duration: a.duration,
                                error: a.error ? a.error.code : null});
  a.addEventListener('loadedmetadata', report, {once: true});
  a.addEventListener('error', report, {once: true});
  a.preload = 'metadata';
  a.load();
}))).then(done);"""
DECODE_IMAGES = """const done = arguments[arguments.length - 1];
(async () => {
  const out = [];
  for (const img of document.querySelectorAll('img')) {
    img.scrollIntoView();
    try { await img.decode(); } catch (e) {}
    out.push({src: img.getAttribute('src'), width: img.naturalWidth, lazy: img.loading});
  }
  window.scrollTo(0, 0);
  return out;
})().then(done);"""


def open_page(driver, page):
    driver.get(page.resolve().as_uri())
    assert driver.title.startswith("unshift")


def check_media(driver, players: int, images: int):
    audio = driver.execute_async_script(LOAD_AUDIO)
    assert len(audio) == players
    for a in audio:
        assert a["error"] is None and a["ready"] >= 1 and a["duration"] > 0, a
    imgs = driver.execute_async_script(DECODE_IMAGES)
    assert len(imgs) == images and all(i["width"] > 0 and i["lazy"] == "lazy" for i in imgs), imgs


def check_static(page, players: int):
    text = page.read_text()
    assert text.count('preload="none"') == players and "base64" not in text and "http" not in text
    assert len(text) < 40_000 * max(1, players // 8)  # audio and images are files beside it


def screenshot(driver, path):
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 5000), "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_report_plays_every_version_shows_every_spectrogram(tmp_path, browser, registry):  # noqa: F811
    """A: the identity (its output is audio), B: a random toy net (its output is nearly DC)."""
    write_checkpoint(tmp_path / "a", IDENTITY)
    write_checkpoint(tmp_path / "b", {"name": "toy"}, seed=1)
    data = tone_folder(tmp_path / "clean", files=2)
    out = tmp_path / "report"
    assert evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(data),
                          "--shifters", "torchaudio,wsola", "--shift", "12", "0", "--metrics", "lsd,mel",
                          "--html", str(out), "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    report = json.loads((tmp_path / "e.json").read_text())
    n = len(report["rows"]) // 2  # examples: 2 files x (2 shifters at +12, and 0 once)
    assert n == 6 and report["listening"]["examples"] == n and len(list((out / "audio").iterdir())) == 4 * n
    check_static(out / "index.html", players=4 * n)
    open_page(browser, out / "index.html")
    check_media(browser, players=4 * n, images=n)
    body = browser.find_element("tag name", "body").text
    assert "-23 LUFS (ITU-R BS.1770)" in body
    stated = [float(v) for v in re.findall(r"Every version plays at (-?[\d.]+) LUFS", body)]
    assert len(stated) == n and "lowered from -23 LUFS so that no version's peak exceeds -1 dBFS" in body
    for k, target in enumerate(stated, 1):  # the files as played: one loudness, no peak above full scale
        played = {v: sf.read(out / "audio" / f"{k:04d}_{v}.ogg")[0]
                  for v in ("clean", "degraded", "enhanced_A", "enhanced_B")}
        assert [integrated_loudness(played[v]) for v in ("clean", "degraded", "enhanced_A")] == pytest.approx(
            [target] * 3, abs=0.3)  # B's near-DC output is dominated by codec noise once decoded
        assert max(peak_db(x) for x in played.values()) < 0.0
    assert "shifter × metric matrix, checkpoint A" in body and "wsola*" in body
    assert "paired comparison of the enhanced scores, B - A" in body and "▼ worse" in body
    for r in report["rows"]:  # every example's metrics are on the page as scored
        assert f"{r['lsd_enhanced']:.4g}" in body
    screenshot(browser, Path(os.environ.get("UNSHIFT_SCREENSHOT") or tmp_path / "report.png"))


def click_through(driver, page, pick) -> dict:
    """Answer every example of a blind page with ``pick(example) -> "A" | "B" | "none"``; return the saved JSON."""
    open_page(driver, page)
    data = json.loads(driver.find_element("id", "blind-data").get_attribute("textContent"))
    for e in data["examples"]:
        driver.find_element("css selector", f'input[name="q{e["example"]}"][value="{pick(e["example"])}"]').click()
    assert driver.find_element("id", "progress").text == f"{len(data['examples'])} of {len(data['examples'])} answered"
    driver.find_element("id", "listener").send_keys("test listener")
    for f in driver.downloads.iterdir():
        f.unlink()
    driver.find_element("id", "save").click()
    target = driver.downloads / f"listening-{data['report_id']}.json"
    deadline = time.monotonic() + 20
    while not _downloaded(target) and time.monotonic() < deadline:
        time.sleep(0.1)
    return target


def _downloaded(target) -> bool:
    """The browser has finished writing ``target``: it exists with content and no partial download is left
    (Chromium can show the file's name before its bytes)."""
    return (target.is_file() and target.stat().st_size > 0
            and not any(f.suffix == ".crdownload" for f in target.parent.iterdir()))


def check_blind_page(page, players, key):
    """Nothing on a blind page tells which version is which: neutral file names, no order, no key beside the page."""
    text = page.read_text()
    srcs = re.findall(r'src="([^"]+)"', text)
    assert len(srcs) == players and all(re.fullmatch(r"audio/\d{4}_(ref|a|b)\.(ogg|mp3)", s) for s in srcs), srcs
    assert not any(w in text for w in ('"order"', '"xy"', '"yx"', "seed", "key"))
    assert key["report_id"] in text and all(token in text for token in key["examples"])
    assert sorted(p.name for p in page.parent.iterdir()) == ["audio", "index.html"]
    check_static(page, players)


def blind_orders(key) -> dict:
    """Example number -> order, from a blind report's key file."""
    return {e["example"]: e["order"] for e in key["examples"].values()}


def test_blind_ab_test_round_trip(tmp_path, browser, registry, capsys):  # noqa: F811
    """--compare on pairs degraded elsewhere, default MP3 players: B's output twice, A's once, no difference once."""
    write_checkpoint(tmp_path / "a", {"name": "toy"}, seed=0)
    write_checkpoint(tmp_path / "b", {"name": "toy"}, seed=1)
    clean = make_folder(tmp_path / "clean", files=4)
    (tmp_path / "deg").mkdir()
    for f in clean.iterdir():
        x, sr = sf.read(f)
        sf.write(tmp_path / "deg" / f.name, 0.5 * x + 0.01 * np.sin(np.arange(len(x)) * 0.3), sr, subtype="FLOAT")
    out = tmp_path / "blind"
    capsys.readouterr()
    assert evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(clean),
                          "--degraded-dir", str(tmp_path / "deg"), "--metrics", "lsd", "--html", str(out), "--blind",
                          "--blind-seed", "3", "--json", str(tmp_path / "e.json"), "--quiet"]) == 0
    key_path = tmp_path / "blind.blind-key.json"  # beside the folder, by default
    assert f"blind key: {key_path} (unblinds the answers: keep it from the listeners)\n" in capsys.readouterr().out
    listening = json.loads((tmp_path / "e.json").read_text())["listening"]
    assert listening["key"] == str(key_path) and not {"order", "seed"} & set(listening)
    key = json.loads(key_path.read_text())
    order = blind_orders(key)
    assert sorted(order) == [1, 2, 3, 4] and set(order.values()) == {"xy", "yx"}  # seed 3 draws both orders
    step = "checkpoints/step_000000007/generator.pt (step 7)"
    assert key["seed"] == 3 and key["page"] == str((out / "index.html").resolve())
    assert (key["x"], key["y"]) == (f"enhanced A: {tmp_path / 'a'}/{step}", f"enhanced B: {tmp_path / 'b'}/{step}")
    check_blind_page(out / "index.html", players=12, key=key)
    want = {1: "y", 2: "x", 3: "none", 4: "y"}  # y = checkpoint B
    letter = {k: "none" if c == "none" else "A" if (c == "x") == (order[k] == "xy") else "B" for k, c in want.items()}
    open_page(browser, out / "index.html")
    check_media(browser, players=12, images=0)
    saved = click_through(browser, out / "index.html", letter.get)
    doc = json.loads(saved.read_text())
    assert doc["listener"] == "test listener" and [a["answer"] for a in doc["answers"]] == [letter[k] for k in order]
    assert [a["token"] for a in doc["answers"]] == list(key["examples"]) and not {"x", "y"} & set(doc)
    capsys.readouterr()
    assert evaluate.main(["--listening-results", str(saved), "--blind-key", str(key_path)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert printed.startswith(f"X = enhanced A: {tmp_path / 'a'}")
    row = preference_table([saved], key_path)
    assert (row["n"], row["prefers_x"], row["prefers_y"], row["no_difference"]) == (4, 1, 2, 1)
    assert row["p"] == 1.0  # 2 of 3 decided: P = 1 two-sided
    assert f"{4:>5}{1:>12}{2:>12}{1:>16}{'1':>14}" in printed and "no significant preference" in printed


def test_blind_test_of_a_cache_split(tmp_path, browser, registry, capsys):  # noqa: F811
    """One checkpoint on a cache's val split, Ogg players, the key where --blind-key says: degraded (X) vs enhanced (Y);
    every answer picks Y. The files behind "A" and "B" follow the key: the degraded input is the one that correlates
    with it.
    """
    from gan.eval.evaluation import cache_examples

    from gan.config import DataConfig, DegradeConfig
    from gan.data.preprocess import build_cache

    write_checkpoint(tmp_path / "a", {"name": "toy"})
    cfg = DataConfig(audio_dir=str(make_folder(tmp_path / "clean", seconds=0.6, files=4)),
                     cache_dir=str(tmp_path / "cache"), val_fraction=0.5, degrade=DegradeConfig(shifts=[12, -12]))
    val = build_cache(cfg, progress=False, num_workers=0)["splits"]["val"]["items"]
    out = tmp_path / "blind"
    assert evaluate.main(["--checkpoint", str(tmp_path / "a"), "--data", str(tmp_path / "cache"), "--metrics", "lsd",
                          "--html", str(out), "--blind", "--blind-seed", "0", "--html-audio", "ogg",
                          "--blind-key", str(tmp_path / "keys" / "k.json"), "--quiet"]) == 0
    n = 2 * len(val)
    key = json.loads((tmp_path / "keys" / "k.json").read_text())
    order = blind_orders(key)
    assert len(order) == n and set(order.values()) == {"xy", "yx"}
    for k, ex in enumerate(cache_examples(tmp_path / "cache", "val", None), 1):
        corr = {}
        for tag in "ab":
            played = sf.read(out / "audio" / f"{k:04d}_{tag}.ogg")[0]
            corr[tag] = abs(played @ ex.degraded) / (np.linalg.norm(played) * np.linalg.norm(ex.degraded))
        degraded_tag = "a" if order[k] == "xy" else "b"
        assert corr[degraded_tag] > 0.99 and corr[degraded_tag] > corr["b" if degraded_tag == "a" else "a"] + 0.1, corr
    check_blind_page(out / "index.html", players=3 * n, key=key)
    open_page(browser, out / "index.html")
    check_media(browser, players=3 * n, images=0)
    saved = click_through(browser, out / "index.html", lambda k: "B" if order[k] == "xy" else "A")
    row = preference_table([saved], tmp_path / "keys" / "k.json")
    assert (row["x"], row["y"]) == ("degraded", f"enhanced A: {tmp_path / 'a'}/checkpoints/step_000000007/"
                                                 "generator.pt (step 7)")
    assert (row["n"], row["prefers_x"], row["prefers_y"], row["no_difference"]) == (n, 0, n, 0)
    assert row["p"] == pytest.approx(2 * 0.5 ** n)
