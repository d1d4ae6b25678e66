import itertools
import json

import numpy as np
import pytest
import torch

from gan.data.cache import FORMAT, CacheError, array_name
from gan.data.loader import EQ_FILTERS, REMIX_DB, TrainStream, equalise, load_val_set, make_train_loader, remix
from gan.config import DataConfig

SHIFTS = [-12, 12]
# train items: each sample of item k is (k + 1) * 1000 (int16); the silent one is 0.
TRAIN = {"long.wav": 5000, "mid.wav": 1000, "edge.wav": 300, "short.wav": 100, "silent.wav": 2000}
VAL = {"v1.wav": 700, "v2.wav": 150}
SEG = 256


def item_value(k: int, name: str) -> int:
    return 0 if name.startswith("silent") else (k + 1) * 1000


def write_cache(path, train=TRAIN, val=VAL):
    """A hand-made cache: clean items are constants; variant k (shift SHIFTS[k]) = clean + SHIFTS[k] (int16 units)."""
    splits = {}
    for split, items in (("train", train), ("val", val)):
        (path / split).mkdir(parents=True)
        clean = np.concatenate([np.full(n, item_value(k, name), np.int16) for k, (name, n) in enumerate(items.items())]
                               or [np.zeros(0, np.int16)])
        clean.tofile(path / split / array_name(None))
        for k, s in enumerate(SHIFTS):
            (clean + np.int16(s)).astype(np.int16).tofile(path / split / array_name(k))
        offsets = np.concatenate([[0], np.cumsum(list(items.values()))[:-1]]).astype(int) if items else []
        splits[split] = {"samples": int(clean.size), "items": [
            {"file": name, "piece": 0, "offset": int(o), "length": n, "shifts": SHIFTS}
            for (name, n), o in zip(items.items(), offsets)]}
    manifest = {"format": FORMAT, "shifts": SHIFTS, "variants": len(SHIFTS), "settings": {"sample_rate": 48000},
                "splits": splits}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def cfg_for(path, **kw) -> DataConfig:
    base = dict(audio_dir="unused", cache_dir=str(path), segment_length=SEG, batch_size=64, num_workers=0,
                val_segment_seconds=512 / 48000, val_examples=5)
    return DataConfig(**{**base, **kw})


@pytest.fixture
def cache(tmp_path):
    return write_cache(tmp_path / "cache")


def test_crops_stay_inside_one_item_and_pair_with_their_shift(cache):
    stream = TrainStream(cache, cfg_for(cache))
    names = list(TRAIN)
    for index in range(5):
        b = stream.batch(index)
        assert b["clean"].shape == b["degraded"].shape == (64, 1, SEG) and b["clean"].dtype == torch.float32
        assert b["shift"].dtype == torch.int64 and set(b["shift"].tolist()) <= set(SHIFTS)
        clean = np.rint(b["clean"][:, 0].numpy() * 32767).astype(int)  # (B, T) back to int16 units
        degraded = np.rint(b["degraded"][:, 0].numpy() * 32767).astype(int)
        for row, deg, shift in zip(clean, degraded, b["shift"].tolist()):
            values = set(np.unique(row[row != 0]).tolist())
            assert len(values) == 1, "a crop mixes two items"
            k = values.pop() // 1000 - 1
            nonzero = np.flatnonzero(row)
            if TRAIN[names[k]] >= SEG:
                assert nonzero.size == SEG
            else:  # a short item sits whole, contiguous, inside a zero-padded crop
                assert nonzero.size == TRAIN[names[k]] and np.ptp(nonzero) == nonzero.size - 1
            np.testing.assert_array_equal(deg[nonzero], row[nonzero] + shift)


def test_items_are_drawn_in_proportion_to_their_length_and_silence_is_redrawn(cache):
    stream = TrainStream(cache, cfg_for(cache, batch_size=500))
    counts = np.zeros(len(TRAIN))  # [silent rows, item 0, item 1, item 2, item 3]
    for index in range(8):
        peak = stream.batch(index)["clean"][:, 0].abs().amax(dim=1).numpy() * 32767
        counts += np.bincount(np.rint(peak / 1000).astype(int), minlength=len(TRAIN))
    assert counts[0] == 0  # the silent item never survives a redraw
    lengths = np.array(list(TRAIN.values())[:-1], float)
    np.testing.assert_allclose(counts[1:] / counts.sum(), lengths / lengths.sum(), atol=0.02)


def test_batch_is_a_pure_function_of_seed_index_and_rank(cache):
    cfg = cfg_for(cache, batch_size=8)
    a, b = TrainStream(cache, cfg), TrainStream(cache, cfg)
    for key in ("clean", "degraded", "shift"):
        assert torch.equal(a.batch(7)[key], b.batch(7)[key])
    assert not torch.equal(a.batch(7)["clean"], a.batch(8)["clean"])
    assert not torch.equal(a.batch(7)["clean"], TrainStream(cache, cfg, rank=1).batch(7)["clean"])
    assert not torch.equal(a.batch(7)["clean"], TrainStream(cache, cfg_for(cache, batch_size=8, seed=1)).batch(7)["clean"])


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_loader_sequence_is_independent_of_workers_and_start_index(cache):
    serial = take(make_train_loader(cache, cfg_for(cache, batch_size=4), 0, 1), 7)
    assert_same(serial, [TrainStream(cache, cfg_for(cache, batch_size=4)).batch(i) for i in range(7)])
    assert_same(take(make_train_loader(cache, cfg_for(cache, batch_size=4, num_workers=2), 0, 1), 7), serial)
    assert_same(take(make_train_loader(cache, cfg_for(cache, batch_size=4, num_workers=3), 0, 1, start_index=3), 4),
                serial[3:])
    other_rank = take(make_train_loader(cache, cfg_for(cache, batch_size=4), 1, 2), 1)
    assert not torch.equal(other_rank[0]["clean"], serial[0]["clean"])


def test_loader_reports_a_failing_worker(cache, tmp_path):
    loader = make_train_loader(cache, cfg_for(cache, batch_size=4, num_workers=2), 0, 1)
    (cache / "train" / array_name(None)).write_bytes(b"")  # the workers open the cache after this
    loader.stream._sampler = None
    with pytest.raises(RuntimeError, match="data loader worker failed on batch 0: .*CacheError: .*clean.i16 is missing or has the wrong size"):
        take(loader, 1)


def test_validation_set_is_fixed_padded_and_cycles_shifts(cache):
    cfg = cfg_for(cache)
    val = load_val_set(cache, cfg)
    assert val["clean"].shape == val["degraded"].shape == (5, 1, 512)
    assert val["shift"].tolist() == [-12, 12, -12, 12, -12]
    again = load_val_set(cache, cfg)
    assert all(torch.equal(val[k], again[k]) for k in val)
    clean = np.rint(val["clean"][:, 0].numpy() * 32767).astype(int)
    sizes = sorted({int((row != 0).sum()) for row in clean})
    assert sizes == [150, 512]  # v2 (150 samples) is padded; v1 gives full crops
    assert {int(v) for v in np.unique(clean)} == {0, 1000, 2000}


def test_empty_splits(tmp_path):
    path = write_cache(tmp_path / "c", val={})
    assert load_val_set(path, cfg_for(path))["clean"].shape == (0, 1, 512)
    path = write_cache(tmp_path / "d", train={})
    with pytest.raises(CacheError, match="cache split 'train' is empty"):
        make_train_loader(path, cfg_for(path), 0, 1)
    with pytest.raises(CacheError, match="no manifest.json"):
        make_train_loader(tmp_path / "missing", cfg_for(tmp_path / "missing"), 0, 1)


class _ZeroDraws:
    """A Generator stand-in whose uniform draws are all 0: every crop position is 0."""

    def random(self, n):
        return np.zeros(n)


@pytest.mark.parametrize("name", ["short.wav", "v2.wav"])  # a short item in the middle / at the end of a split
def test_short_item_at_position_zero_stays_inside_its_item(cache, name):
    from gan.data.cache import open_cache
    from gan.data.loader import CropSampler
    split_name, items = ("train", TRAIN) if name in TRAIN else ("val", VAL)
    split = open_cache(cache).split(split_name)
    k = list(items).index(name)
    crops = CropSampler(split, SEG, -60.0).draw(_ZeroDraws(), 2, items=np.array([k, k]), variant=np.array([0, 1]))
    clean = np.rint(crops["clean"] * 32767).astype(int)
    expected = np.zeros(SEG, int)
    expected[:items[name]] = item_value(k, name)  # the item at the crop's start, then zeros
    np.testing.assert_array_equal(clean, [expected, expected])
    degraded = np.rint(crops["degraded"] * 32767).astype(int)
    np.testing.assert_array_equal(degraded, [np.where(expected != 0, expected - 12, 0),
                                             np.where(expected != 0, expected + 12, 0)])


def _children() -> dict[int, str]:
    """This process's child processes -> their state letter (R, S, Z, ...), from /proc."""
    import os
    from pathlib import Path
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            children[int(stat.parent.name)] = fields[0]
    return children


def test_closing_the_loader_reaps_workers_stuck_in_a_batch(cache, monkeypatch):
    import time
    import gan.data.loader as data_mod
    monkeypatch.setattr(data_mod, "STOP_SECONDS", 0.2)
    before = set(_children())
    loader = make_train_loader(cache, cfg_for(cache, batch_size=4, num_workers=2), 0, 1)
    real = TrainStream.batch
    monkeypatch.setattr(TrainStream, "batch", lambda self, i, out=None: (i > 0 and time.sleep(60)) or real(self, i, out))
    it = iter(loader)
    next(it)  # batch 0; the workers now hang on later batches
    workers = {pid for pid, state in _children().items() if pid not in before and state != "Z"}
    assert len(workers) >= 2  # the two workers, alive and stuck
    t0 = time.monotonic()
    it.close()
    assert time.monotonic() - t0 < 10  # not the 60 s the workers sleep
    assert workers.isdisjoint(_children())  # killed and reaped: neither running nor zombies


def test_augmentation_scales_pairs_by_one_gain_and_silences_a_share(cache):
    plain = TrainStream(cache, cfg_for(cache)).batch(3)
    aug = TrainStream(cache, cfg_for(cache, gain_db=[-20.0, -6.0], silence_fraction=0.25)).batch(3)
    assert torch.equal(aug["shift"], plain["shift"])
    silent = (aug["clean"].abs().amax(dim=(1, 2)) == 0) & (aug["degraded"].abs().amax(dim=(1, 2)) == 0)
    loud = plain["clean"].abs().amax(dim=(1, 2)) > 0
    assert 8 <= int((silent & loud).sum()) <= 24  # about a quarter of 64
    for j in torch.nonzero(~silent & loud).flatten().tolist():
        gain = float(aug["clean"][j].abs().max() / plain["clean"][j].abs().max())
        assert 10 ** (-20 / 20) - 1e-6 <= gain <= 10 ** (-6 / 20) + 1e-6
        torch.testing.assert_close(aug["degraded"][j], plain["degraded"][j] * gain, rtol=1e-5, atol=1e-7)
    assert torch.equal(aug["clean"], TrainStream(cache, cfg_for(cache, gain_db=[-20.0, -6.0],
                                                                 silence_fraction=0.25)).batch(3)["clean"])


def test_equalisation_filters_both_sides_of_a_pair_alike():
    """An impulse and half of it go through the same filters: the pair keeps its ratio exactly (one linear
    filter), the response is the product of EQ_FILTERS peaking filters bounded by +-eq_db each, 0 Hz is left
    alone, and the same generator state draws the same filters."""
    n, t = 16, 4096
    clean = np.zeros((n, t), np.float32)
    clean[:, 0] = 1.0
    crops = {"clean": clean.copy(), "degraded": 0.5 * clean}
    equalise(crops, np.random.default_rng(7), 6.0, 48000)
    np.testing.assert_allclose(crops["degraded"], 0.5 * crops["clean"], rtol=1e-5, atol=1e-7)
    response_db = 20 * np.log10(np.abs(np.fft.rfft(crops["clean"], axis=1)))  # (n, t / 2 + 1)
    assert response_db.max() <= EQ_FILTERS * 6.0 + 1e-3 and response_db.min() >= -EQ_FILTERS * 6.0 - 1e-3
    assert (np.abs(response_db).max(axis=1) > 1.0).all()  # every crop equalised
    assert np.abs(response_db[:, 0]).max() < 0.1  # peaking filters leave 0 Hz alone
    again = {"clean": clean.copy(), "degraded": 0.5 * clean}
    equalise(again, np.random.default_rng(7), 6.0, 48000)
    assert np.array_equal(again["clean"], crops["clean"])


def test_remix_adds_a_crop_of_the_same_shifter_on_both_sides():
    """Crop j is the constant j + 1 (clean) and 2 (j + 1) (degraded): a remixed crop is itself plus a partner of
    its own family at a level in REMIX_DB, on both sides (the pair stays a pair); a crop alone in its family
    stays as it is; fraction 0 changes nothing."""
    family = np.array(["torchaudio", "wsola", "torchaudio", "clean input", "torchaudio", "wsola"], dtype=object)
    clean = np.repeat(np.arange(1, 7, dtype=np.float32)[:, None], 8, axis=1)
    crops = {"clean": clean.copy(), "degraded": 2 * clean}
    remix(crops, np.random.default_rng(3), 1.0, family)
    np.testing.assert_allclose(crops["degraded"], 2 * crops["clean"], rtol=1e-6)
    lo, hi = 10 ** (np.array(REMIX_DB) / 20)
    for j, name in enumerate(family):
        added = crops["clean"][j, 0] - clean[j, 0]
        if name == "clean input":
            assert added == 0.0
            continue
        partners = [k for k in range(6) if family[k] == name and k != j]
        assert any(lo * (k + 1) - 1e-5 <= added <= hi * (k + 1) + 1e-5 for k in partners)
        assert (crops["clean"][j] == crops["clean"][j, 0]).all()
    untouched = {"clean": clean.copy(), "degraded": 2 * clean}
    remix(untouched, np.random.default_rng(3), 0.0, family)
    assert np.array_equal(untouched["clean"], clean)


def test_eq_db_keeps_training_pairs_pairs_and_batches_pure(cache):
    plain = TrainStream(cache, cfg_for(cache)).batch(4)
    eq = TrainStream(cache, cfg_for(cache, eq_db=12.0)).batch(4)
    assert torch.equal(eq["shift"], plain["shift"])
    assert torch.equal(eq["clean"], TrainStream(cache, cfg_for(cache, eq_db=12.0)).batch(4)["clean"])
    # the cache's degraded audio is clean + a constant: after one linear filter, still clean + a filtered constant
    diff = (eq["degraded"] - eq["clean"]) - (plain["degraded"] - plain["clean"])
    assert diff.abs().max() < 0.05


def test_quiet_fraction_keeps_a_share_of_quiet_crops(cache):
    """silent.wav is a fifth of the train audio: redrawn always by default, kept in proportion with quiet_fraction 1."""
    def silent_share(**kw):
        stream = TrainStream(cache, cfg_for(cache, silence_db=-60.0, **kw))
        crops = torch.cat([stream.batch(i)["clean"] for i in range(10)])
        return float((crops.abs().amax(dim=(1, 2)) == 0).float().mean())
    assert silent_share() == 0.0
    assert 0.1 < silent_share(quiet_fraction=1.0) < 0.35


def test_identity_fraction_feeds_clean_audio_as_input(cache):
    b = TrainStream(cache, cfg_for(cache, identity_fraction=0.5)).batch(2)
    same = (b["degraded"] == b["clean"]).all(dim=2)[:, 0]
    assert 16 <= int(same.sum()) <= 48 and (b["shift"][same] == 0).all() and (b["shift"][~same] != 0).all()
