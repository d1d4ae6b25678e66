"""Metric values against hand-computed ones; evaluation reports and the paired comparison."""
import json
import math
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import ROOT
from gan.config import MelLossConfig
from gan.losses.reconstruction import MultiScaleMelLoss
from gan.eval.metrics import (MetricSuite, extra_available, improvement, log_spectral_distance, paired_test, si_sdr_db,
                         summarize)
from helpers import IDENTITY, half_level_pairs, make_folder, noise, tone_folder, write_checkpoint


def test_lsd_of_scaled_copy_is_twice_log10_of_gain():
    x = noise()
    assert log_spectral_distance(x, x) == 0.0
    assert log_spectral_distance(x, 10 * x) == pytest.approx(2.0, abs=1e-6)  # log10(10^2) in every bin
    assert log_spectral_distance(x, 0.5 * x) == pytest.approx(2 * math.log10(2), abs=1e-6)


def test_si_sdr_hand_computed():
    r = noise(seed=1).astype(np.float64)
    r -= r.mean()
    assert si_sdr_db(r, 3.0 * r) > 60  # a scaled copy: only eps keeps it finite
    n = noise(seed=2).astype(np.float64)
    n -= n.mean()
    n -= (n @ r) / (r @ r) * r  # orthogonal to r: the projection of r + n on r is exactly r
    n *= math.sqrt((r @ r) / (10.0 * (n @ n)))  # signal / noise energy = 10 -> 10 dB
    assert si_sdr_db(r, r + n) == pytest.approx(10.0, abs=1e-3)


def test_suite_mel_equals_training_loss_and_identity_is_zero():
    x, y = noise(seed=3), noise(seed=4)
    suite = MetricSuite(["lsd", "mel", "mrstft", "si_sdr"])
    same = suite.score(x, x)
    assert same["lsd"] == 0.0 and same["mel"] == 0.0 and abs(same["mrstft"]) < 1e-6 and same["si_sdr"] > 60
    ref = float(MultiScaleMelLoss(MelLossConfig())(torch.from_numpy(y)[None, None], torch.from_numpy(x)[None, None]))
    assert suite.score(x, y)["mel"] == pytest.approx(ref, rel=1e-6)
    with pytest.raises(ValueError, match="unknown"):
        MetricSuite(["lsd", "loudness"])


def test_improvement_sign_means_better():
    assert improvement("lsd", 2.0, 1.5) == 0.5 and improvement("si_sdr", -30.0, -20.0) == 10.0
    assert improvement("mel", 1.0, 2.0) == -1.0


def test_summary_and_paired_test_hand_computed():
    s = summarize([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert s == pytest.approx({"mean": 2.5, "std": math.sqrt(5 / 3), "median": 2.5, "min": 1.0, "max": 4.0, "n": 4})
    a = np.array([5.0, 1.0, 7.0, 2.0])
    r = paired_test(a, a + [1.0, 2.0, 3.0, 4.0])
    # d = 1..4: mean 2.5, sd sqrt(5/3), t(0.975, 3) = 3.182446 -> half width 2.054260
    assert r["mean_diff"] == 2.5 and r["ci95"] == pytest.approx([0.445740, 4.554260], abs=1e-5)
    assert r["t_p"] == pytest.approx(0.030466, abs=1e-5)  # t = 3.872983, 3 dof, two-sided
    assert r["wilcoxon_p"] == pytest.approx(0.125)  # all 4 ranks positive: 2 / 2^4
    assert r["better"] == "b"
    r = paired_test(a, a - [1.0, 2.0, 3.0, 4.0], higher_is_better=False)
    assert r["better"] == "b"


def test_paired_test_of_identical_scores_reports_no_difference():
    r = paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert r["mean_diff"] == 0.0 and r["ci95"] == [0.0, 0.0] and r["t_p"] == 1.0 and r["wilcoxon_p"] == 1.0
    assert r["better"] == "neither"


@pytest.mark.skipif(extra_available("stoi") or extra_available("pesq"), reason="pesq / pystoi not installed")
def test_pesq_stoi_of_identical_speechlike_signal():
    t = np.arange(48000 * 3) / 48000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    x += noise(len(x), seed=5, scale=0.01)
    sc = MetricSuite(["pesq", "stoi"]).score(x, x)
    assert sc["stoi"] == pytest.approx(1.0, abs=1e-6) and sc["pesq"] > 4.5


def test_missing_extra_is_skipped_with_a_note(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pesq" else real(name, *a))
    suite = MetricSuite(["lsd", "pesq"])
    assert suite.names == ["lsd"] and "pip install" in suite.skipped["pesq"]


def test_evaluate_cli_compares_two_identical_checkpoints(tmp_path, registry):  # noqa: F811
    write_checkpoint(tmp_path / "a", {"name": "toy"}, seed=0)
    write_checkpoint(tmp_path / "b", {"name": "toy"}, seed=0)
    data = make_folder(tmp_path / "clean")
    sys.path.insert(0, str(ROOT / "launch"))
    import evaluate

    out = tmp_path / "r"
    assert evaluate.main(["--compare", str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(data),
                          "--shift", "12", "--metrics", "lsd,si_sdr", "--json", str(out / "e.json"),
                          "--csv", str(out / "e.csv"), "--plot", str(out / "e.png"), "--quiet"]) == 0
    report = json.loads((out / "e.json").read_text())
    assert len(report["rows"]) == 4 and {r["shift"] for r in report["rows"]} == {"+12"}
    for m in ("lsd", "si_sdr"):
        for c in (report["compare"][m], report["compare_matched"][m]):  # the outputs, and the gain-matched outputs
            assert c["n"] == 2 and c["mean_diff"] == 0.0 and c["better"] == "neither" and c["t_p"] == 1.0
        s = report["summary"]["A"][f"{m}_improvement"]
        assert s["n"] == 2 and math.isfinite(s["mean"])
    assert (out / "e_summary.csv").is_file() and (out / "e.png").stat().st_size > 0
    assert (out / "e.csv").read_text().count("\n") == 5
    assert "lsd_beyond_level" in (out / "e.csv").read_text().splitlines()[0]


def test_evaluate_pairs_from_degraded_dir(tmp_path, registry):  # noqa: F811
    from gan.eval.evaluation import evaluate

    write_checkpoint(tmp_path / "a", {"name": "toy"})
    clean = make_folder(tmp_path / "clean", files=1)
    (tmp_path / "deg").mkdir()
    x, sr = sf.read(clean / "f0.wav")
    sf.write(tmp_path / "deg" / "f0.wav", 0.5 * x, sr, subtype="FLOAT")
    report = evaluate([tmp_path / "a"], clean, degraded_dir=tmp_path / "deg", metrics=["lsd"], progress=False)
    (row,) = report["rows"]
    assert row["shift"] == "given" and row["lsd_degraded"] == pytest.approx(2 * math.log10(2), abs=1e-3)


def test_evaluate_reads_a_cache_split(tmp_path, registry):  # noqa: F811
    from gan.data.preprocess import build_cache
    from gan.config import DataConfig, DegradeConfig
    from gan.eval.evaluation import evaluate

    write_checkpoint(tmp_path / "a", {"name": "toy"})
    cfg = DataConfig(audio_dir=str(make_folder(tmp_path / "clean", seconds=0.3, files=3)),
                     cache_dir=str(tmp_path / "cache"), val_fraction=0.5, degrade=DegradeConfig(shifts=[12]))
    manifest = build_cache(cfg, progress=False, num_workers=0)
    val = manifest["splits"]["val"]["items"]
    report = evaluate([tmp_path / "a"], tmp_path / "cache", metrics=["lsd"], progress=False)
    assert [r["file"] for r in report["rows"]] == [f"{it['file']}#{it['piece']}" for it in val]
    assert all(r["shift"] == "+12" and r["lsd_degraded"] > 0 for r in report["rows"])
    assert report["verdict"]["A"]["lsd"]["verdict"] in ("better", "worse", "no significant change")
    (cell,) = report["matrix"]["A"]  # a cache: one row per shifter, every shift pooled
    assert (cell["shifter"], cell["shift"], cell["n"]) == ("torchaudio", "all", len(val))
    with pytest.raises(Exception, match="has no shift"):
        evaluate([tmp_path / "a"], tmp_path / "cache", shifts=[5], metrics=["lsd"], progress=False)


def test_folder_examples_degrade_in_the_caches_pieces_with_its_keys(tmp_path, monkeypatch):
    """A file longer than a piece scores as its cache items: same pieces, same shifter per piece, same samples."""
    import gan.data.cache as cache_mod
    import gan.data.preprocess as preprocess_mod
    import gan.data.recipe as recipe_mod
    from gan.config import DataConfig, DegradeConfig
    from gan.eval.evaluation import folder_examples

    monkeypatch.setattr(recipe_mod, "PIECE_SECONDS", 0.25)
    deg = DegradeConfig(shifts=[12], shifters={"torchaudio": 1.0, "signalsmith": 1.0}, seed=3)
    cfg = DataConfig(audio_dir=str(make_folder(tmp_path / "clean", seconds=0.7, files=1)),
                     cache_dir=str(tmp_path / "cache"), val_fraction=0.0, degrade=deg)
    items = preprocess_mod.build_cache(cfg, progress=False, num_workers=0)["splits"]["train"]["items"]
    assert [it["piece"] for it in items] == [0, 1, 2]
    assert {it["shifters"]["12"] for it in items} == {"torchaudio", "signalsmith"}  # the key matters
    part = cache_mod.open_cache(tmp_path / "cache").split("train")
    (ex,) = folder_examples(tmp_path / "clean", deg, [12])
    assert (ex.file, ex.shift, len(ex.clean), len(ex.degraded)) == ("f0.wav", "+12", part.lengths.sum(), len(ex.clean))
    for it, off, n in zip(items, part.offsets, part.lengths):  # the cache stores round(x * gain * 32767)
        for ours, theirs in ((ex.clean, part.clean), (ex.degraded, part.degraded[0])):
            expect = np.round(ours[off: off + n] * (it["gain"] * cache_mod.SCALE))
            assert np.array_equal(expect, theirs[off: off + n])
    (cut,) = folder_examples(tmp_path / "clean", deg, [12], max_seconds=0.3)  # a piece is degraded whole, then cut
    assert len(cut.clean) == 14400 and np.array_equal(cut.degraded, ex.degraded[:14400])


@pytest.mark.slow
@pytest.mark.skipif(extra_available("visqol") or extra_available("dnsmos"), reason="visqol / speechmos not installed")
def test_visqol_and_dnsmos_rank_clean_above_noisy():
    t = np.arange(48000 * 3) / 48000
    x = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    x += noise(len(x), seed=6, scale=0.003)
    suite = MetricSuite(["visqol", "dnsmos"])
    same, noisy = suite.score(x, x), suite.score(x, x + noise(len(x), seed=7, scale=0.1))
    assert same["visqol"] > 4.0 and noisy["visqol"] < same["visqol"] - 0.5
    assert 1.0 <= noisy["dnsmos"] <= 5.0 and 1.0 <= same["dnsmos"] <= 5.0


def test_shifter_matrix_marks_unseen_shifters_and_skips_silent_references(tmp_path, capsys, registry):  # noqa: F811
    from gan.eval.evaluation import evaluate
    from gan.eval.report import format_matrix, plot_matrix

    write_checkpoint(tmp_path / "a", {"name": "dac_unet", "channels": 4, "max_channels": 8, "strides": [2, 4],
                                      "residual": True, "output_activation": "none"})  # untrained: the identity
    data = tone_folder(tmp_path / "clean")
    sf.write(data / "silent.wav", np.zeros(22050, np.float32), 44100)
    sf.write(data / "empty.wav", np.zeros((0, 1), np.float32), 44100)
    report = evaluate([tmp_path / "a"], data, shifts=[12, 0], shifters=["torchaudio", "wsola"],
                      metrics=["lsd", "mel"], progress=False)
    err = capsys.readouterr().err
    assert "note: silent.wav: silent" in err and "note: empty.wav: empty; skipped" in err
    assert {r["file"] for r in report["rows"]} == {"tone0.wav", "tone1.wav", "tone2.wav"}
    cells = {(c["shifter"], c["shift"]): c for c in report["matrix"]["A"]}
    assert set(cells) == {("torchaudio", "+12"), ("wsola", "+12"), ("none", "0")}
    assert cells[("torchaudio", "+12")]["trained"] and not cells[("wsola", "+12")]["trained"]  # config mix: torchaudio
    for cell in cells.values():
        assert cell["n"] == 3
        for m in ("lsd", "mel"):
            v = cell["metrics"][m]
            assert v["enhanced"] == pytest.approx(v["degraded"], abs=1e-6)  # the identity changes nothing
    assert cells[("torchaudio", "+12")]["metrics"]["mel"]["degraded"] > 0.1
    assert cells[("none", "0")]["metrics"]["mel"]["degraded"] == 0.0
    for cell in cells.values():  # the identity: its gain-matched output is the gain-matched input
        for m in ("lsd", "mel"):
            v = cell["metrics"][m]
            assert v["enhanced_matched"] == pytest.approx(v["degraded_matched"], abs=1e-6)
            assert abs(v["beyond_abs"]) < 1e-6 and v["matched_rel"] == pytest.approx(v["level_rel"], nan_ok=True)
    for m in ("lsd", "mel"):  # a phase vocoder loses level: the oracle gain alone brings the input closer
        assert cells[("torchaudio", "+12")]["metrics"][m]["level_rel"] > 0.05
    assert math.isnan(cells[("none", "0")]["metrics"]["mel"]["level_rel"])  # clean input: nothing to change
    text = format_matrix(report)
    assert "wsola*" in text and "torchaudio " in text and "abs" in text
    assert "note: some cells: 3 examples cannot reach p < 0.01 (the smallest one-sided Wilcoxon p is 2^-3" in text
    head = next(ln for ln in text.splitlines() if ln.startswith("shifter"))
    assert head.split() == ["shifter", "shift", "n", "lsd", "lsd", "level", "lsd", "beyond", "mel", "mel", "level",
                            "mel", "beyond"]
    row = next(ln for ln in text.splitlines() if ln.startswith("torchaudio")).split()
    lsd_level = cells[("torchaudio", "+12")]["metrics"]["lsd"]["level_rel"]
    assert row[:6] == ["torchaudio", "+12", "3", "+0.0%", f"{100 * lsd_level:+.1f}%", "+0.0%"]
    plot_matrix(report, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_one_sided_p_values_say_better_or_worse():
    from gan.eval.metrics import one_sided_p

    deg = np.linspace(1.0, 2.0, 10)
    better, worse = one_sided_p(deg, deg - 0.1, higher_is_better=False)  # every distance shrinks
    assert better < 0.01 and worse > 0.99
    better, worse = one_sided_p(deg, deg + 0.1, higher_is_better=False)
    assert better > 0.99 and worse < 0.01
    assert all(math.isnan(p) for p in one_sided_p(deg, deg, higher_is_better=False))


def test_level_checks_of_the_identity(tmp_path, registry):  # noqa: F811
    from gan.eval.evaluation import level_checks
    from gan.inference import Enhancer, load_generator

    write_checkpoint(tmp_path / "a", {"name": "dac_unet", "channels": 4, "max_channels": 8, "strides": [2, 4],
                                      "residual": True, "output_activation": "none"})
    checks = level_checks(Enhancer(load_generator(tmp_path / "a"), device="cpu"), tone_folder(tmp_path / "clean"))
    assert checks["silence_out_dbfs"] < -200 and abs(checks["noise_floor_out_dbfs"] + 80) < 0.2
    assert abs(checks["hot_peak_change_db"]) < 1e-3 and checks["hot_source"] == "tone0.wav"


# --------------------------------------------------------------------------- level-matched baselines


def test_oracle_gain_by_hand():
    from gan.eval.level import gain_match, oracle_gain

    assert oracle_gain([3.0, 4.0], [1.0, 0.0]) == (5.0, None)  # sqrt(25 / 1)
    ref = noise(seed=8)
    matched, g, note = gain_match(ref, 0.5 * ref)
    assert (g, note) == (2.0, None) and matched.dtype == np.float32 and np.array_equal(matched, ref)
    sc = MetricSuite(["lsd", "mel"]).score(ref, matched)
    assert sc == {"lsd": 0.0, "mel": 0.0}  # the gain-matched input of a level-only change is the reference
    assert oracle_gain(ref, -3 * ref)[0] == pytest.approx(1 / 3, rel=1e-7)  # the sign is kept: a gain, not a fit
    assert oracle_gain(ref, np.zeros(10)) == (1.0, "digitally silent, no oracle gain (gain 1)")
    assert oracle_gain(np.zeros(10), ref) == (1.0, "the reference is digitally silent, no oracle gain (gain 1)")


def test_level_only_change_is_all_level_nothing_beyond(tmp_path, registry):  # noqa: F811
    """Input at half the level, the identity as model: the oracle gain recovers all of it (level +100 %), and the
    model's gain-matched output equals the gain-matched input (beyond level 0), in rows, summary, verdict and text."""
    from gan.eval.evaluation import evaluate
    from gan.eval.report import format_table

    clean, deg = half_level_pairs(tmp_path)
    report = evaluate([tmp_path / "a"], clean, degraded_dir=deg, metrics=["lsd", "mel"], progress=False)
    for r in report["rows"]:
        assert r["input_gain"] == pytest.approx(2.0, rel=1e-6) and r["output_gain"] == pytest.approx(2.0, rel=1e-6)
        assert r["lsd_degraded"] == pytest.approx(2 * math.log10(2), abs=1e-3)
        assert r["lsd_degraded_matched"] < 1e-4 and r["lsd_enhanced_matched"] < 1e-4
        assert r["lsd_level"] == pytest.approx(r["lsd_degraded"] - r["lsd_degraded_matched"])
        assert abs(r["lsd_beyond_level"]) < 1e-6 and abs(r["mel_beyond_level"]) < 1e-6
    s = report["summary"]["A"]
    assert s["lsd_level"]["mean"] == pytest.approx(2 * math.log10(2), abs=1e-3) and s["lsd_beyond_level"]["n"] == 2
    assert report["verdict_beyond_level"]["A"]["lsd"]["verdict"] == "no significant change"
    lines = format_table(report).splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("metric") and "gm input" in ln)
    assert lines[head].split() == ["metric", "input", "gm", "input", "level", "output", "gm", "output", "beyond",
                                   "level"]
    lsd = lines[head + 1].split()
    assert lsd[0] == "lsd" and lsd[3] == "+100.0%" and lsd[6:] == ["+0.0000", "abs"]  # all level, nothing beyond
    assert any(ln.startswith("verdict lsd beyond level (gm output vs gm input): no significant change") for ln in lines)


@pytest.mark.parametrize("mode", ["recipe", "degraded_dir"])
def test_empty_and_silent_references_are_skipped_with_one_note_in_every_mode(tmp_path, capsys, registry,  # noqa: F811
                                                                             mode):
    from gan.eval.evaluation import evaluate

    write_checkpoint(tmp_path / "a", IDENTITY)
    data = tone_folder(tmp_path / "clean", files=2)
    sf.write(data / "silent.wav", np.zeros(22050, np.float32), 44100)
    sf.write(data / "empty.wav", np.zeros((0, 1), np.float32), 44100)
    degraded = None
    if mode == "degraded_dir":
        degraded = tmp_path / "deg"
        degraded.mkdir()
        for f in data.iterdir():
            x, sr = sf.read(f, dtype="float32")
            sf.write(degraded / f.name, 0.5 * x, sr)
    report = evaluate([tmp_path / "a"], data, shifts=[12, -12], degraded_dir=degraded, metrics=["lsd", "mel"],
                      progress=False)
    err = capsys.readouterr().err
    assert err.count("note: silent.wav: silent (RMS -300 dBFS < -60); skipped") == 1
    assert err.count("note: empty.wav: empty; skipped") == 1 and "NaN" not in err
    assert {r["file"] for r in report["rows"]} == {"tone0.wav", "tone1.wav"}
    assert all(math.isfinite(r["lsd_degraded"]) and r["lsd_degraded"] > 0 for r in report["rows"])


def test_too_few_examples_can_never_be_significant():
    """With n examples all better, the exact one-sided Wilcoxon p is 2^-n: p < 0.01 takes 7; the verdict says so."""
    from gan.eval.evaluation import verdict
    from gan.eval.metrics import one_sided_p, pairs_needed, smallest_p

    assert (smallest_p(5), pairs_needed(0.01), pairs_needed(0.05)) == (1 / 32, 7, 5)
    for n in (5, 6, 7):
        deg = np.linspace(1.0, 2.0, n)
        assert one_sided_p(deg, deg - 0.01 * np.arange(1, n + 1), higher_is_better=False)[0] == 2.0 ** -n
    deg = np.linspace(1.0, 2.0, 5)
    v = verdict(deg, deg - 0.1, "lsd")
    assert v["verdict"] == "no significant change" and v["p_better"] == 1 / 32
    assert v["note"] == ("5 examples cannot reach p < 0.01 (the smallest one-sided Wilcoxon p is 2^-5 = 0.0312): "
                         "score 7 or more, e.g. more files or a cache's val split (--data <cache>)")
    deg = np.linspace(1.0, 2.0, 7)
    assert verdict(deg, deg - 0.1, "lsd")["verdict"] == "better" and "note" not in verdict(deg, deg - 0.1, "lsd")


def test_summary_columns_never_run_together(tmp_path, registry):  # noqa: F811
    from gan.eval.evaluation import evaluate
    from gan.eval.report import format_table

    clean, deg = half_level_pairs(tmp_path)
    report = evaluate([tmp_path / "a"], clean, degraded_dir=deg, metrics=["lsd"], progress=False)
    report["summary"]["A"]["lsd_beyond_level"] = {"mean": 2.162, "std": -0.0003008, "median": -1.234e-05,
                                                  "min": -123456.7, "max": 0.5, "n": 12345}
    line = next(ln for ln in format_table(report).splitlines() if ln.startswith("lsd_beyond_level"))
    assert line.split() == ["lsd_beyond_level", "2.162", "-0.0003008", "-1.234e-05", "-1.235e+05", "0.5", "12345"]


def test_matrix_caption_says_which_metrics_are_distances_and_which_scores(tmp_path, registry):  # noqa: F811
    from gan.eval.evaluation import evaluate
    from gan.eval.report import format_matrix

    write_checkpoint(tmp_path / "a", IDENTITY)
    report = evaluate([tmp_path / "a"], tone_folder(tmp_path / "clean", files=1), shifts=[12],
                      shifters=["torchaudio"], metrics=["lsd", "si_sdr"], progress=False)
    caption = format_matrix(report).splitlines()[1]
    assert caption.startswith("relative change of the mean against the input, + = better (lsd: distances, lower is "
                              "better; si_sdr: scores, higher is better)")
    assert "distance" not in caption.replace("lsd: distances", "")
