"""A file is as long as what decodes from it, never what its header says: every reader path.

The MP3s are made here from synthetic audio, then edited as files in the wild are: a VBR
file without its Xing/LAME info frame (libsndfile's length is then libmpg123's estimate
from the first frame's bitrate, and its reads stop there), and the same behind a large
ID3v2 tag (cover art: the estimate then counts the tag's bytes as audio, and
``SoundFile.blocks`` pads the missing frames with stale blocks).
"""
import numpy as np
import pytest
import soundfile as sf
import torch

from gan.config import DataConfig, DegradeConfig
from gan.data import preprocess
from gan.data.cache import open_cache
from gan.dsp.audio import audio_blocks, audio_info, read_audio, to_mono
from gan.eval.evaluation import shifter_examples
from helpers import Toy, ToyConfig, enhancer, rel_db

pytestmark = pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile without MP3 (needs >= 1.1)")

RATE = 48000
FRAME = 1152  # samples per MPEG-1 layer III frame
KBPS = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]  # MPEG-1 layer III bitrate index


def mpeg_frames(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, length, kbit/s) of each MPEG-1 layer III frame at 48 kHz after an optional ID3v2 tag."""
    pos = 0
    if data[:3] == b"ID3":
        pos = 10 + sum((b & 0x7F) << (7 * (3 - i)) for i, b in enumerate(data[6:10]))  # syncsafe size
    frames = []
    while pos + 4 <= len(data):
        h = int.from_bytes(data[pos:pos + 4], "big")
        assert h >> 21 == 0x7FF and (h >> 17) & 0xF == 0b1101, f"no MPEG-1 layer III frame at byte {pos}"
        assert (h >> 10) & 3 == 1, "not 48 kHz"
        kbps = KBPS[(h >> 12) & 0xF]
        n = 144 * kbps * 1000 // RATE + ((h >> 9) & 1)  # + padding byte
        frames.append((pos, n, kbps))
        pos += n
    return frames


def id3v2_tag(size: int) -> bytes:
    """An ID3v2.3 tag of ``size`` bytes holding one APIC frame (cover art)."""
    body = b"\0image/jpeg\0\3\0"
    body += bytes(size - 20 - len(body))
    frame = b"APIC" + len(body).to_bytes(4, "big") + b"\0\0" + body  # v2.3 frame sizes are plain integers
    n = len(frame)
    return b"ID3\3\0\0" + bytes((n >> s) & 0x7F for s in (21, 14, 7, 0)) + frame


@pytest.fixture(scope="module")
def mp3s(tmp_path_factory):
    """good.mp3 (VBR with its info frame), noxing.mp3 (without), tagged.mp3 (without, behind 300 kB of ID3v2)."""
    root = tmp_path_factory.mktemp("mp3")
    t = np.arange(6 * RATE) / RATE
    rng = np.random.default_rng(0)
    left = 0.3 * np.sin(2 * np.pi * 440 * t * (1 + 0.5 * t)) + 0.05 * rng.standard_normal(len(t))
    right = 0.2 * np.sin(2 * np.pi * 220 * t) * (t > 1)
    x = np.stack([left, right], 1).astype(np.float32)
    x[2 * RATE:3 * RATE] *= 0.01  # a quiet second: the frames' bitrates vary more
    sf.write(root / "good.mp3", x, RATE, format="MP3")
    data = (root / "good.mp3").read_bytes()
    frames = mpeg_frames(data)
    info_frame = data[frames[0][0]: frames[0][0] + frames[0][1]]
    assert b"Xing" in info_frame or b"Info" in info_frame
    assert len({k for _, _, k in frames[1:]}) > 3  # VBR
    body = data[frames[1][0]:]
    (root / "noxing.mp3").write_bytes(body)
    (root / "tagged.mp3").write_bytes(id3v2_tag(300_000) + body)
    sf.write(root / "truthful.wav", x, RATE)
    decoded = (len(frames) - 1) * FRAME  # every audio frame, no encoder delay or padding removed (no info frame)
    return root, {"good.mp3": len(x), "noxing.mp3": decoded, "tagged.mp3": decoded, "truthful.wav": len(x)}


def reference(path) -> np.ndarray:
    """Whole-file decode by other means -> (C, T): miniaudio's one-call MP3 decoder, libsndfile's read for WAV."""
    if path.suffix == ".mp3":
        import miniaudio

        d = miniaudio.mp3_read_file_f32(str(path))
        return np.asarray(d.samples, np.float32).reshape(-1, d.nchannels).T
    return sf.read(path, dtype="float32", always_2d=True)[0].T


def note(path, header: int, decoded: int) -> str:
    return f"note: {path}: header says {header} frames, decoded {decoded}; using {decoded}"


def test_libsndfile_misreads_the_made_files(mp3s):
    root, n = mp3s
    assert sf.info(root / "noxing.mp3").frames < n["noxing.mp3"] / 2  # libsndfile: 2.2 s of a 6-s file
    with sf.SoundFile(root / "noxing.mp3") as f:
        assert len(f.read()) == sf.info(root / "noxing.mp3").frames  # ... and its reads stop there
    header = sf.info(root / "tagged.mp3").frames
    assert header > 1.5 * n["tagged.mp3"]
    with sf.SoundFile(root / "tagged.mp3") as f:  # what enhancement did: blocks sized by the header
        blocks = np.concatenate(list(f.blocks(RATE, dtype="float32")))
    assert len(blocks) == header
    tail = blocks[n["tagged.mp3"]:]
    assert np.abs(tail).max() > 0.1  # audio that was never decoded there: stale blocks
    assert sf.info(root / "good.mp3").frames == n["good.mp3"]  # with its info frame the header is right


@pytest.mark.parametrize("name", ["noxing.mp3", "tagged.mp3", "good.mp3", "truthful.wav"])
def test_read_audio_and_audio_info_give_the_decoded_frames(mp3s, name, capsys):
    root, n = mp3s
    path = root / name
    ref = reference(path)
    assert ref.shape == (2, n[name])
    header = sf.info(path).frames
    expected_note = [note(path, header, n[name])] if header != n[name] else []

    audio, rate = read_audio(path)
    assert rate == RATE and audio.shape == (2, n[name])
    np.testing.assert_array_equal(audio, ref)
    assert capsys.readouterr().err.splitlines() == expected_note

    info = audio_info(path)
    assert (info.frames, info.header_frames, info.channels) == (n[name], header, 2)
    assert info.peak == float(np.abs(ref).max())
    assert capsys.readouterr().err.splitlines() == expected_note

    blocks = list(audio_blocks(path, size=10000))
    assert all(b.shape[0] == 2 and b.shape[1] <= 10000 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), ref)
    part, _ = read_audio(path, 123_456, 10**9)  # a range past the end: only what decodes
    np.testing.assert_array_equal(part, ref[:, 123_456:])
    assert capsys.readouterr().err == ""  # partial reads say nothing


def test_mp3_decoding_agrees_with_libsndfile_where_libsndfile_reads(mp3s):
    """A second decoder (libmpg123 via libsndfile) over the frames it does read: no stale or shifted audio."""
    root, n = mp3s
    for name in ("noxing.mp3", "tagged.mp3"):
        with sf.SoundFile(root / name) as f:
            theirs = f.read(dtype="float32", always_2d=True).T  # noxing: stops at its estimate; tagged: to the end
        ours, _ = read_audio(root / name, note=lambda line: None)
        assert theirs.shape[1] == min(sf.info(root / name).frames, n[name])
        np.testing.assert_allclose(ours[:, : theirs.shape[1]], theirs, atol=1e-4)


@pytest.mark.parametrize("name", ["noxing.mp3", "tagged.mp3"])
def test_enhance_writes_exactly_the_decoded_frames(mp3s, name, tmp_path, capsys):
    root, n = mp3s
    torch.manual_seed(0)
    enh = enhancer(Toy(ToyConfig()), ToyConfig(), chunk_seconds=0.5)
    out = enh.enhance_file(root / name, tmp_path / name, progress=False)
    err = capsys.readouterr().err.splitlines()
    assert err == [note(root / name, sf.info(root / name).frames, n[name])]
    written, _ = read_audio(out)  # our own MP3: its info frame is truthful
    assert capsys.readouterr().err == ""
    assert written.shape == (2, n[name])
    whole = enh.enhance(reference(root / name))  # the same model on the decoded audio
    # through one more MP3 encoding: close to the in-memory result to the last second, nothing stale
    assert rel_db(torch.from_numpy(written), whole) < -15
    assert rel_db(torch.from_numpy(written[:, -RATE:]), whole[:, -RATE:]) < -15


def test_preprocess_caches_the_decoded_frames(mp3s, tmp_path):
    root, n = mp3s
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("noxing.mp3", "tagged.mp3"):
        (audio / name).write_bytes((root / name).read_bytes())
    cfg = DataConfig(audio_dir=str(audio), cache_dir=str(tmp_path / "cache"), val_fraction=0.5,
                     degrade=DegradeConfig(shifts=[12], shifters={"torchaudio": 1.0}, n_fft=1024))
    lines = []
    preprocess.build_cache(cfg, progress=False, num_workers=0, warn=lines.append)
    notes = [line for line in lines if line.startswith("note:")]
    assert notes == [note(audio / name, sf.info(audio / name).frames, n[name]) for name in ("noxing.mp3", "tagged.mp3")]
    cache = open_cache(cfg.cache_dir)
    for split in ("train", "val"):
        data = cache.split(split)
        for it in data.items:
            assert it["length"] == n[it["file"]]  # 48 kHz in, 48 kHz out: one piece of every decoded frame
            stored = data.clean[it["offset"]: it["offset"] + it["length"]] / 32767.0
            np.testing.assert_allclose(stored, to_mono(reference(audio / it["file"])) * it["gain"], atol=0.6 / 32767)
    assert sorted(it["file"] for s in ("train", "val") for it in cache.split(s).items) == ["noxing.mp3", "tagged.mp3"]


def test_evaluation_reads_the_decoded_frames(mp3s, capsys):
    root, n = mp3s
    examples = {e.file: e for e in shifter_examples(root, DegradeConfig(), ["torchaudio"], [0])}
    for name in ("noxing.mp3", "tagged.mp3", "good.mp3"):
        np.testing.assert_allclose(examples[name].clean, to_mono(reference(root / name)), atol=1e-6)
    err = capsys.readouterr().err.splitlines()
    assert sorted(line for line in err if "header says" in line) == [
        note(root / name, sf.info(root / name).frames, n[name]) for name in ("noxing.mp3", "tagged.mp3")]
