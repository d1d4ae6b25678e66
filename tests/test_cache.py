import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

import gan.data.preprocess as preprocess_mod
import gan.data.recipe as recipe_mod
from gan.dsp.audio import read_audio, resample, to_mono
from gan.data.cache import CacheError, open_cache
from gan.data.preprocess import cache_status, ensure_cache
from gan.data.recipe import split_of
from gan.config import DataConfig, DegradeConfig
from gan.dsp.shifters import round_trip

from conftest import DEMO_AUDIO, ROOT

STEREO = "bass_hard_c.flac"  # 44.1 kHz stereo, 1.5 s
MONO = "bd_808.flac"  # 44.1 kHz mono, 0.56 s


@pytest.fixture
def audio_dir(tmp_path):
    """Two good files (one in a subfolder), plus a corrupt, a silent, a too-short and an empty one."""
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    (d / STEREO).write_bytes((DEMO_AUDIO / STEREO).read_bytes())
    (d / "sub" / MONO).write_bytes((DEMO_AUDIO / MONO).read_bytes())
    (d / "corrupt.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage, not audio")
    sf.write(d / "silent.wav", np.zeros(48000, np.float32), 48000)
    short, sr = read_audio(DEMO_AUDIO / STEREO)
    sf.write(d / "short.flac", short[:, : sr // 10].T, sr)  # 0.1 s
    sf.write(d / "empty.wav", np.zeros((0, 1), np.float32), 48000)
    return d


def make_cfg(tmp_path, audio_dir, **kw) -> DataConfig:
    degrade = DegradeConfig(shifts=[-10, 12], shifters={"torchaudio": 1.0, "signalsmith": 1.0}, n_fft=1024)
    return DataConfig(audio_dir=str(audio_dir), cache_dir=str(tmp_path / "cache"), val_fraction=0.5,
                      degrade=degrade, **kw)


def test_preprocess_skips_bad_files_and_stores_mono_48k_pairs(tmp_path, audio_dir):
    cfg = make_cfg(tmp_path, audio_dir)
    lines = []
    manifest = preprocess_mod.build_cache(cfg, progress=False, num_workers=0, warn=lines.append)
    reasons = {s["file"]: s["reason"].split(" (")[0] for s in manifest["skipped"]}
    assert reasons == {"corrupt.wav": "unreadable", "silent.wav": "silent", "short.flac": "too short",
                       "empty.wav": "empty"}
    assert sum(line.startswith("warning: skipped") for line in lines) == 4
    assert "2/6 files" in lines[-1] and "skipped 1 empty, 1 silent, 1 too short, 1 unreadable" in lines[-1]
    sec = {split: f"{manifest['seconds'][split]:.1f}" for split in ("train", "val")}  # one file each
    assert f": train 1 file ({sec['train']} s), val 1 file ({sec['val']} s) by data.val_fraction 0.5;" in lines[-1]
    assert sorted(sec.values()) == ["0.6", "1.5"]  # the mono file, the stereo file

    cache = open_cache(cfg.cache_dir)
    assert cache.shifts == [-10, 12]
    items = {it["file"]: (split, it) for split in ("train", "val") for it in cache.split(split).items}
    assert set(items) == {STEREO, f"sub/{MONO}"}
    assert {split for split, _ in items.values()} == {"train", "val"}  # one each: val is never left empty
    for rel, (split, it) in items.items():
        audio, sr = read_audio(audio_dir / rel)
        assert (sr, it["source_channels"]) == (44100, audio.shape[0])
        expect = resample(to_mono(audio), 44100, 48000) * it["gain"]
        data = cache.split(split)
        stored = data.clean[it["offset"]: it["offset"] + it["length"]] / 32767.0
        assert it["length"] == len(expect) == int(np.ceil(audio.shape[1] * 48000 / 44100))
        np.testing.assert_allclose(stored, expect, atol=0.6 / 32767)
        assert it["shifts"] == [-10, 12]  # variants 0: every shift, in order
        for k, s in enumerate(it["shifts"]):  # each shift: the round trip by the recorded shifter, same gain
            deg = data.degraded[k][it["offset"]: it["offset"] + it["length"]] / 32767.0
            ref = round_trip(resample(to_mono(audio), 44100, 48000), s, cfg.degrade, it["shifters"][str(s)])
            np.testing.assert_allclose(deg, ref * it["gain"], atol=1.5 / 32767)
    assert cache_status(cfg) == "ok"


def test_a_folder_without_usable_audio_is_a_clear_error(tmp_path, audio_dir):
    for name in (STEREO, f"sub/{MONO}"):
        (audio_dir / name).unlink()
    with pytest.raises(CacheError, match=r"audio folder .*: none of its 4 audio files is usable"):
        ensure_cache(make_cfg(tmp_path, audio_dir), progress=False, num_workers=0)
    assert not (tmp_path / "cache").exists()


def test_split_is_a_stable_hash_of_the_relative_path():
    names = [f"song{i}.wav" for i in range(400)]
    val = [n for n in names if split_of(n, 0.25) == "val"]
    assert 60 < len(val) < 140
    # pinned: the split of a file must not move between versions, processes or machines
    assert val[:6] == ["song0.wav", "song11.wav", "song19.wav", "song22.wav", "song25.wav", "song28.wav"]
    assert all(split_of(n, 0.0) == "train" for n in names)


def test_ensure_cache_reuses_a_fresh_cache_and_rebuilds_a_stale_one(tmp_path, audio_dir):
    cfg = make_cfg(tmp_path, audio_dir)
    path = ensure_cache(cfg, progress=False, num_workers=0)
    stamp = (path / "manifest.json").stat().st_mtime_ns
    assert ensure_cache(cfg, progress=False, num_workers=0) == path
    assert (path / "manifest.json").stat().st_mtime_ns == stamp  # nothing rebuilt

    other = make_cfg(tmp_path, audio_dir)
    other.degrade.shifts = [12]
    assert cache_status(other) == "stale"
    other.on_stale_cache = "error"
    with pytest.raises(CacheError, match=r"built for other data settings.*--rebuild"):
        ensure_cache(other, progress=False, num_workers=0)
    other.on_stale_cache = "rebuild"
    ensure_cache(other, progress=False, num_workers=0)
    assert open_cache(path).shifts == [12] and cache_status(other) == "ok"

    sf.write(audio_dir / "new.wav", np.full(24000, 0.1, np.float32), 48000)  # the folder changed
    assert cache_status(other) == "stale"


def test_an_interrupted_build_leaves_no_cache(tmp_path, audio_dir, monkeypatch):
    cfg = make_cfg(tmp_path, audio_dir)
    real = preprocess_mod.process_piece
    calls = []

    def dies_on_second(task, c):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task, c)

    monkeypatch.setattr(preprocess_mod, "process_piece", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        ensure_cache(cfg, progress=False, num_workers=0)
    assert cache_status(cfg) == "missing" and not (tmp_path / "cache").exists()
    # the partial folder is gone too; the empty lock file stays (deleting it would race other builders)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.lock", "audio"]
    assert (tmp_path / ".cache.lock").stat().st_size == 0
    with pytest.raises(CacheError, match="no manifest.json"):
        open_cache(cfg.cache_dir)


def test_partial_folders_of_dead_builds_are_removed(tmp_path, audio_dir):
    cfg = make_cfg(tmp_path, audio_dir)
    partial = tmp_path / f".cache.partial-{preprocess_mod.socket.gethostname()}-{_dead_pid()}"
    (partial / "train").mkdir(parents=True)
    ensure_cache(cfg, progress=False, num_workers=0)
    assert not partial.exists() and cache_status(cfg) == "ok"


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_a_broken_cache_file_is_a_clear_error(tmp_path, audio_dir):
    cfg = make_cfg(tmp_path, audio_dir)
    path = ensure_cache(cfg, progress=False, num_workers=0)
    (path / "train" / "variant_1.i16").write_bytes(b"\x00\x00")
    with pytest.raises(CacheError, match=r"train/variant_1.i16 is missing or has the wrong size; rebuild"):
        open_cache(path).split("train")


@pytest.mark.slow
def test_killed_preprocess_leaves_no_valid_cache_and_workers_match_in_process(tmp_path, audio_dir):
    """SIGKILL a real preprocess run mid-way; then a 2-worker build equals an in-process one."""
    for i in range(2):  # enough work that the kill lands mid-build
        (audio_dir / f"copy{i}.flac").write_bytes((DEMO_AUDIO / "loop_amen.flac").read_bytes())
    cfg = make_cfg(tmp_path, audio_dir)
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from gan.config import DataConfig, DegradeConfig\nfrom gan.data.preprocess import ensure_cache\n"
              f"if __name__ == '__main__':\n"
              f"    d = DegradeConfig(shifts=[-10, 12], shifters={{'torchaudio': 1.0, 'signalsmith': 1.0}}, n_fft=1024)\n"
              f"    ensure_cache(DataConfig(audio_dir={cfg.audio_dir!r}, cache_dir={cfg.cache_dir!r}, "
              f"val_fraction=0.5, degrade=d), progress=False, num_workers=1)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".cache.partial-*/train/clean.i16")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(tmp_path.glob(".cache.partial-*")), "the kill should land while the cache is being written"
    assert cache_status(cfg) == "missing"

    two = ensure_cache(cfg, progress=False, num_workers=2)
    assert not list(tmp_path.glob(".cache.partial-*"))
    one = make_cfg(tmp_path, audio_dir)
    one.cache_dir = str(tmp_path / "cache_inproc")
    ensure_cache(one, progress=False, num_workers=0)
    m2, m1 = (json.loads((p / "manifest.json").read_text()) for p in (two, tmp_path / "cache_inproc"))
    assert m1["splits"] == m2["splits"]
    for f in sorted(p.relative_to(two) for p in two.rglob("*.i16")):
        assert (two / f).read_bytes() == (tmp_path / "cache_inproc" / f).read_bytes(), f


def test_a_failing_file_is_skipped_with_a_one_line_reason(tmp_path, audio_dir, monkeypatch):
    real = recipe_mod.round_trip

    def fails_on_mono(x, shift, cfg, shifter):
        if x.shape[-1] < 40000:  # the 0.56 s mono file only
            raise RuntimeError("stft failed\nsecond line")
        return real(x, shift, cfg, shifter)

    monkeypatch.setattr(recipe_mod, "round_trip", fails_on_mono)
    lines = []
    manifest = preprocess_mod.build_cache(make_cfg(tmp_path, audio_dir), progress=False, num_workers=0,
                                     warn=lines.append)
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert reasons[f"sub/{MONO}"] == "failed (RuntimeError: stft failed)"
    assert f"warning: skipped sub/{MONO}: failed (RuntimeError: stft failed)" in lines


def test_a_sample_rate_without_a_short_ratio_to_48k_is_skipped(tmp_path):
    d = tmp_path / "odd"
    d.mkdir()
    sf.write(d / "odd.wav", np.full(44101, 0.1, np.float32), 44101)
    sf.write(d / "ok.wav", np.full(44100, 0.1, np.float32), 44100)
    lines = []
    tasks, skipped = preprocess_mod._plan(make_cfg(tmp_path, d), sorted(d.iterdir()), d, lines.append)
    assert [t[1] for t in tasks] == ["ok.wav"]
    assert skipped == [{"file": "odd.wav", "reason": skipped[0]["reason"]}]
    assert skipped[0]["reason"].startswith("unsupported sample rate (44101 Hz") and len(lines) == 1


def test_only_this_hosts_dead_partials_are_removed(tmp_path):
    host = preprocess_mod.socket.gethostname()
    ours = tmp_path / f".cache.partial-{host}-{_dead_pid()}"
    other_host = tmp_path / f".cache.partial-{host}-2-{_dead_pid()}"  # host "<ours>-2": not ours to judge
    for p in (ours, other_host):
        p.mkdir()
    preprocess_mod._remove_dead_partials(tmp_path / "cache")
    assert not ours.exists() and other_host.exists()


def test_a_concurrent_build_landing_first_is_a_clear_error(tmp_path, monkeypatch):
    tmp, path = tmp_path / ".cache.partial", tmp_path / "cache"
    for p in (tmp, path):
        (p / "train").mkdir(parents=True)
    real = os.replace

    def other_build_lands(src, dst):
        real(src, dst)
        if dst == path.parent / f".cache.old-{preprocess_mod.socket.gethostname()}-{os.getpid()}":
            (path / "train").mkdir(parents=True)  # the other run's cache appears in between

    monkeypatch.setattr(preprocess_mod.os, "replace", other_build_lands)
    with pytest.raises(CacheError, match=r"cache .*cache: another preprocess run wrote it at the same time"):
        preprocess_mod._replace(tmp, path)


def test_an_unknown_split_is_a_clear_error(tmp_path, audio_dir):
    path = ensure_cache(make_cfg(tmp_path, audio_dir), progress=False, num_workers=0)
    with pytest.raises(CacheError, match=r"no split 'test'; known: train, val"):
        open_cache(path).split("test")


def test_variants_draw_distinct_shifts_per_piece_from_the_range(tmp_path, audio_dir, monkeypatch):
    monkeypatch.setattr(recipe_mod, "PIECE_SECONDS", 0.5)  # several pieces per file
    shifts = [s for s in range(-12, 13) if s]
    degrade = DegradeConfig(shifts=shifts, variants=3, shifters={"torchaudio": 1.0, "wsola": 1.0}, n_fft=1024)
    cfg = DataConfig(audio_dir=str(audio_dir), cache_dir=str(tmp_path / "cache"), val_fraction=0.5, degrade=degrade)
    manifest = preprocess_mod.build_cache(cfg, progress=False, num_workers=0, warn=lambda m: None)
    cache = open_cache(cfg.cache_dir)
    assert cache.variants == 3 and sorted(p.name for p in (tmp_path / "cache" / "train").iterdir()) == [
        "clean.i16", "variant_0.i16", "variant_1.i16", "variant_2.i16"]
    items = [it for s in ("train", "val") for it in manifest["splits"][s]["items"]]
    assert len(items) >= 4
    drawn = set()
    for it in items:
        assert len(set(it["shifts"])) == 3 and set(it["shifts"]) <= set(shifts)
        assert it["shifts"] == recipe_mod.piece_shifts(degrade, it["file"], it["piece"])  # a pure function of the piece
        drawn |= set(it["shifts"])
    assert len(drawn) >= 8  # pieces differ
    part = cache.split("train")
    it, off, n = part.items[0], part.offsets[0], part.lengths[0]
    audio, sr = read_audio(audio_dir / it["file"])
    bounds = recipe_mod.piece_bounds(audio.shape[1], sr)[it["piece"]]  # the piece's source frames
    clean = resample(to_mono(audio[:, bounds[0]: bounds[1]]), sr, 48000)
    for k, s in enumerate(it["shifts"]):  # variant k is the round trip by the piece's k-th shift
        ref = round_trip(clean, s, degrade, it["shifters"][str(s)]) * it["gain"]
        np.testing.assert_allclose(part.degraded[k][off: off + n] / 32767.0, ref, atol=1.5 / 32767)


@pytest.mark.parametrize("rel", [f"song{i}.wav" for i in range(8)])
def test_bandlimit_empties_the_top_band_and_keeps_alignment(rel):
    x = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1
    y, what = recipe_mod.bandlimit(x, rel, 0, seed=0)
    assert y.shape == x.shape and y.dtype == np.float32
    power = np.abs(np.fft.rfft(y)) ** 2
    freqs = np.fft.rfftfreq(len(y), 1 / 48000)
    assert power[freqs > 21000].sum() < 1e-3 * power.sum(), what  # the top band is empty
    assert power[freqs < 7000].sum() > 0.2 * power.sum(), what
    lags = range(-300, 301)
    corr = [np.dot(y[1000 + lag: 40000 + lag], x[1000:40000]) for lag in lags]
    assert lags[int(np.argmax(corr))] == 0, what  # no codec delay left


def test_bandlimited_pieces_are_training_pieces_only(tmp_path, audio_dir):
    cfg = make_cfg(tmp_path, audio_dir, bandlimit_fraction=1.0)
    manifest = preprocess_mod.build_cache(cfg, progress=False, num_workers=0, warn=lambda m: None)
    assert all("bandlimit" in it for it in manifest["splits"]["train"]["items"])
    assert not any("bandlimit" in it for it in manifest["splits"]["val"]["items"])


@pytest.mark.parametrize("name", ["gan_dac", "gan_wavunet"])
def test_production_configs_require_an_audio_folder(name, tmp_path):
    from gan.config import ConfigError, load_config

    cfg = load_config(name, [f"data.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match=r"^data\.audio_dir: <your music folder> is a placeholder; .*--set data\.audio_dir="):
        ensure_cache(cfg.data, progress=False)
    assert not (tmp_path / "cache").exists()


def test_a_cache_is_never_replaced_by_one_of_other_recordings(tmp_path, audio_dir):
    from gan.dsp.audio import AudioError

    cfg = make_cfg(tmp_path, audio_dir)
    path = ensure_cache(cfg, progress=False, num_workers=0)
    stamp = (path / "manifest.json").read_bytes()
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    (other_dir / STEREO).write_bytes((DEMO_AUDIO / STEREO).read_bytes())
    other = make_cfg(tmp_path, other_dir)  # same cache_dir, another folder
    with pytest.raises(CacheError, match=r"holds the audio of .*audio, not .*other; set data.cache_dir"):
        ensure_cache(other, progress=False, num_workers=0)
    assert (path / "manifest.json").read_bytes() == stamp
    typo = make_cfg(tmp_path, tmp_path / "audoi")  # a folder that does not exist
    with pytest.raises(AudioError, match=r"audoi: not found; .*data.cache_only=true"):
        ensure_cache(typo, progress=False, num_workers=0)
    typo.cache_only = True  # asked for explicitly: the cache as it is
    assert ensure_cache(typo, progress=False, num_workers=0) == path
    assert (path / "manifest.json").read_bytes() == stamp


@pytest.mark.slow
def test_processes_sharing_a_cache_folder_build_it_once(tmp_path, audio_dir):
    """Two launches (machines sharing a filesystem, or two local ranks) at once: one builds, one waits and reuses."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from gan.data.preprocess import ensure_cache\n"
            "from gan.config import DataConfig, DegradeConfig\n"
            "d = DegradeConfig(shifts=[12], n_fft=1024)\n"
            "ensure_cache(DataConfig(audio_dir=%r, cache_dir=%r, val_fraction=0.5, degrade=d), num_workers=0)\n"
            % (str(ROOT), str(audio_dir), str(tmp_path / "cache")))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    builds = sum(out.count("2/6 files of") for out in outs)  # the summary line of a build
    assert builds == 1, outs
    assert cache_status(make_cfg(tmp_path, audio_dir)) != "missing"


def test_default_workers_fit_the_available_memory(tmp_path, audio_dir, monkeypatch):
    monkeypatch.setattr(preprocess_mod, "usable_cores", lambda: 8)
    for free_gb, workers in [(64, 8), (5, 2), (1, 1), (0, 1)]:  # 2 GB per worker, at least one
        monkeypatch.setattr(preprocess_mod, "available_memory", lambda: free_gb * 2**30)
        assert preprocess_mod.default_workers() == workers
    monkeypatch.setattr(preprocess_mod, "available_memory", lambda: None)  # unknown: one per core
    assert preprocess_mod.default_workers() == 8
    used = []
    monkeypatch.setattr(preprocess_mod, "default_workers", lambda: 1)
    monkeypatch.setattr(preprocess_mod, "_map", lambda tasks, cfg, n: used.append(n) or [])
    with pytest.raises(CacheError):  # nothing processed
        preprocess_mod.build_cache(make_cfg(tmp_path, audio_dir), progress=False, warn=lambda m: None)
    assert used == [1]
    help_text = subprocess.run([sys.executable, str(ROOT / "launch" / "preprocess.py"), "--help"],
                               capture_output=True, text=True).stdout
    assert "at most one per 2 GB of available memory" in " ".join(help_text.split())
