"""Chunked enhancement equals whole-file enhancement; files of any rate, channels and length."""
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

import generators
from conftest import ROOT
from gan.dsp.audio import AudioError
from gan.train.checkpoint import CheckpointError
from gan.config import DegradeConfig
from gan.dsp.chunking import BlockReader, plan_windows, resample_blocks, tensor_blocks
from gan.inference import Enhancer, load_generator, output_paths
from tiny_configs import tiny_dac_unet, tiny_wavunet
from helpers import TINY_DAC, Toy, ToyConfig, assert_chunked_equals_whole, enhancer, rel_db, write_checkpoint


def test_plan_windows_cover_output_once():
    w = plan_windows(n_in=25, n_out=25, hop=8, context=4)
    assert [(x.start, x.end, x.keep_start, x.keep_end, x.offset) for x in w] == [
        (0, 12, 0, 8, 0), (4, 20, 8, 16, 4), (12, 25, 16, 24, 4), (20, 25, 24, 25, 4)]
    # resampling 147 -> 160 (44.1 -> 48 kHz): output positions scale by 160 / 147
    w = plan_windows(n_in=1000, n_out=math.ceil(1000 * 160 / 147), hop=294, context=147, num=160, den=147)
    assert w[1].keep_start == 320 and w[1].offset == 160 and w[-1].keep_end == 1089
    assert sum(x.keep_end - x.keep_start for x in w) == 1089


def test_block_reader_keeps_only_what_later_reads_need():
    reader = BlockReader(tensor_blocks(torch.arange(100.0)[None], size=7), 1)
    assert reader.read(0, 10).tolist() == [list(range(10))]
    assert reader.read(5, 30).tolist() == [list(range(5, 30))]
    assert reader._buf.shape[-1] <= 25 + 7
    with pytest.raises(ValueError, match="before retained"):
        reader.read(4, 8)


@pytest.mark.parametrize("orig,new", [(44100, 48000), (48000, 44100), (22050, 48000)])
def test_streamed_resampling_equals_whole(orig, new):
    x = torch.randn(2, orig * 3 + 123)
    blocks, n = resample_blocks(tensor_blocks(x, 5000), 2, x.shape[-1], orig, new, hop=int(0.3 * orig))
    y = torch.cat(list(blocks), dim=-1)
    ref = AF.resample(x, orig, new)  # its length is ceil() in float32: may be one short
    assert y.shape[-1] == n == -(-x.shape[-1] * new // orig) and 0 <= n - ref.shape[-1] <= 1
    assert rel_db(y[:, : ref.shape[-1]], ref) < -100


def test_chunked_equals_whole_on_30s_file():
    torch.manual_seed(0)
    model = Toy(ToyConfig())
    enh = enhancer(model, ToyConfig(), chunk_seconds=2.0, batch_size=3)
    x = (torch.randn(1, 30 * 48000) * 0.3).clamp(-0.9, 0.9)  # inside the training range: no level scaling
    with torch.inference_mode():
        whole = model(x[None])[0]
    assert rel_db(enh.enhance(x), whole) < -60
    enh.context = 0  # too little context leaves seams: the tolerance is not trivially met
    assert rel_db(enh.enhance(x[:, :4 * 48000]), whole[:, :4 * 48000]) > -60


@pytest.mark.parametrize("cfg", [tiny_dac_unet(), tiny_dac_unet(residual=True, gain_path=True),
                                 tiny_wavunet(residual=True, gain_path=True)], ids=["plain", "gain", "wavunet_gain"])
def test_chunked_equals_whole_dac_unet(cfg):
    torch.manual_seed(0)
    model = generators.build_generator(cfg)
    if cfg.residual:  # leave the zero start: a gain envelope that varies, and a correction
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    enh = enhancer(model, cfg, chunk_seconds=1600 / 48000, batch_size=2)
    assert model.receptive_field() // 2 <= enh.context < model.receptive_field() and enh.context % 16 == 0
    assert enh.hop == 1600 and enh.context < 2 * enh.hop  # so windows 2 and 3 are interior (and batched)
    assert_chunked_equals_whole(enh, model)


def test_windows_stay_bounded_on_long_input():
    torch.manual_seed(0)
    model = Toy(ToyConfig())
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    enh = enhancer(model, ToyConfig(), chunk_seconds=0.5, batch_size=2)
    y = enh.enhance(torch.randn(1, 10 * 44100) * 0.1, 44100)
    hook.remove()
    assert y.shape == (1, 10 * 44100) and len(seen) == 11  # first, 9 pairs of interior windows, last
    assert max(s[-1] for s in seen) == enh.hop + 2 * enh.context and max(s[0] for s in seen) == 2


def test_load_generator_from_run_and_step_dirs(tmp_path, registry):
    model = write_checkpoint(tmp_path / "run", TINY_DAC)
    step_dir = tmp_path / "run" / "checkpoints" / "step_000000007"
    for path in (tmp_path / "run", step_dir, step_dir / "generator.pt"):
        loaded = load_generator(path)
        assert loaded.step == 7 and loaded.cfg.generator == tiny_dac_unet()
        x = torch.randn(1, 1, 1000)
        assert torch.equal(loaded.model(x), model.eval()(x))


def test_load_generator_errors(tmp_path, registry):
    with pytest.raises(CheckpointError, match=r"nope: no such file or folder; pass a run directory"):
        load_generator(tmp_path / "nope")
    (tmp_path / "song.wav").write_bytes(b"RIFF")
    with pytest.raises(CheckpointError, match=r"song.wav: a file but not a generator.pt; pass a run directory"):
        load_generator(tmp_path / "song.wav")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_generator(tmp_path / "empty")
    write_checkpoint(tmp_path / "run", TINY_DAC)
    gen = tmp_path / "run" / "checkpoints" / "step_000000007" / "generator.pt"
    gen.write_bytes(gen.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable generator checkpoint"):
        load_generator(tmp_path / "run")
    write_checkpoint(tmp_path / "other", {**TINY_DAC, "channels": 3})
    gen.write_bytes((tmp_path / "other" / "checkpoints" / "step_000000007" / "generator.pt").read_bytes())
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(tmp_path / "run")


@pytest.mark.parametrize("content", [b"not a checkpoint" * 64, pickle.dumps({"weights": [1, 2]})],
                         ids=["garbage", "foreign_pickle"])
def test_unreadable_generator_is_one_line_that_never_advises_weights_only_false(tmp_path, registry, capsys,
                                                                                 content):
    """A corrupt or foreign generator.pt: our line naming the file, for inference, evaluation and --init-from."""
    from gan.train.checkpointer import load_init_weights

    sys.path.insert(0, str(ROOT / "launch"))
    import evaluate

    write_checkpoint(tmp_path / "run", TINY_DAC)
    step = tmp_path / "run" / "checkpoints" / "step_000000007"
    (step / "generator.pt").write_bytes(content)
    want = (f"checkpoint {step / 'generator.pt'}: not a readable generator checkpoint (truncated, corrupt or not "
            "written by unshift); re-download it or save it again")
    with pytest.raises(CheckpointError) as e:
        load_generator(tmp_path / "run")
    assert str(e.value) == want
    assert evaluate.main(["--checkpoint", str(tmp_path / "run"), "--data", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: {want}\n"
    (step / "trainer_state.pt").touch()  # --init-from reads generator.pt when Accelerate's weights are absent
    with pytest.raises(CheckpointError) as e:
        load_init_weights(torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), step)
    assert str(e.value) == want and "weights_only" not in want


def test_enhance_file_keeps_rate_channels_length_and_subtype(tmp_path, registry):
    write_checkpoint(tmp_path / "run", {"name": "toy"})
    enh = Enhancer(load_generator(tmp_path / "run"), chunk_seconds=0.25, device="cpu")
    x = (np.random.default_rng(0).standard_normal((44100 + 11, 2)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "in.wav", x, 44100, subtype="PCM_16")
    sf.write(tmp_path / "short.flac", x[:4410], 44100)  # 0.1 s
    for name in ("in.wav", "short.flac"):
        out = enh.enhance_file(tmp_path / name, tmp_path / "out" / name, progress=False)
        a, b = sf.info(str(tmp_path / name)), sf.info(str(out))
        assert (b.samplerate, b.channels, b.frames, b.format, b.subtype) == (
            a.samplerate, a.channels, a.frames, a.format, a.subtype)
        y, _ = sf.read(out)
        assert np.abs(y).max() > 0 and np.abs(y[:, 0] - y[:, 1]).max() > 0  # both channels processed
    with pytest.raises(AudioError, match="is the input"):
        enh.enhance_file(tmp_path / "in.wav", tmp_path / "in.wav")
    with pytest.raises(AudioError, match="overwrite the input"):
        output_paths([tmp_path / "in.wav"], tmp_path)
    (tmp_path / "b").mkdir()
    sf.write(tmp_path / "b" / "in.wav", x[:100], 44100)
    with pytest.raises(AudioError, match="both"):
        output_paths([tmp_path / "in.wav", tmp_path / "b" / "in.wav"], tmp_path / "o")


def test_output_folder_inside_an_input_folder_is_refused(tmp_path):
    (tmp_path / "b").mkdir()
    sf.write(tmp_path / "b" / "in.wav", np.zeros(100, np.float32), 44100)
    for out in (tmp_path / "b", tmp_path / "b" / "cleaned", tmp_path / "b" / ".." / "b"):  # a folder into itself
        with pytest.raises(AudioError, match=rf"^-o {out}: lies inside the input folder {tmp_path / 'b'} \(it "
                                             rf"would write {out / 'b'}/\.\.\., read as input next time\)"):
            output_paths([tmp_path / "b"], out)
    assert output_paths([tmp_path / "b"], tmp_path / "bb") == [(tmp_path / "b" / "in.wav",
                                                                tmp_path / "bb" / "b" / "in.wav")]


def test_enhance_cli_identity_shift_0_returns_input(tmp_path, registry, monkeypatch):
    monkeypatch.setattr(Toy, "forward", lambda self, x: x.clone())  # identity weights
    write_checkpoint(tmp_path / "run", {"name": "toy"})
    x = (np.random.default_rng(1).standard_normal((48000 * 2 + 5, 2)) * 0.1).astype(np.float32)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "a.wav", x, 48000, subtype="FLOAT")
    sys.path.insert(0, str(ROOT / "launch"))
    import enhance

    assert enhance.main(["--checkpoint", str(tmp_path / "run"), "--shift", "0", "--quiet", "-o",
                         str(tmp_path / "out"), str(tmp_path / "in")]) == 0
    y, sr = sf.read(tmp_path / "out" / "in" / "a.wav", dtype="float32")
    assert sr == 48000 and np.array_equal(y, x)
    from gan.dsp.shifters import apply_shift  # --shift 3 with identity weights = the training shifter alone
    assert enhance.main(["--checkpoint", str(tmp_path / "run"), "--shift", "3", "--quiet", "-o",
                         str(tmp_path / "s3"), str(tmp_path / "in" / "a.wav")]) == 0
    y, _ = sf.read(tmp_path / "s3" / "a.wav", dtype="float32")
    ref = apply_shift(torch.from_numpy(x.T.copy()), 48000, 3, DegradeConfig())
    assert rel_db(torch.from_numpy(y.T.copy()), ref) < -50
    assert enhance.main(["--checkpoint", str(tmp_path / "nope"), "-o", str(tmp_path / "o2"),
                         str(tmp_path / "in")]) == 2


@pytest.mark.slow
def test_ten_minute_file_streams_with_bounded_memory(tmp_path):
    """Peak RSS for a 10-min file stays close to that for a 2-min one (the audio is never held whole)."""
    script = (
        "import resource, sys, torch, numpy as np, soundfile as sf\n"
        "sys.path[:0] = [sys.argv[3], sys.argv[3] + '/tests']\n"
        "from helpers import Toy, ToyConfig, enhancer\n"
        "torch.set_num_threads(1)\n"
        "enh = enhancer(Toy(ToyConfig()), ToyConfig(), chunk_seconds=5.0)\n"
        "enh.enhance_file(sys.argv[1], sys.argv[2], progress=False)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    peaks = {}
    for seconds in (120, 600):
        src = tmp_path / f"{seconds}.wav"
        with sf.SoundFile(src, "w", 44100, 1, "PCM_16") as f:
            for _ in range(seconds // 10):
                f.write(np.random.default_rng(0).standard_normal(441000).astype(np.float32) * 0.1)
        out = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / f"o{seconds}.wav"), str(ROOT)],
                             capture_output=True, text=True, check=True)
        peaks[seconds] = int(out.stdout.split()[-1]) / 1024  # MiB
        assert sf.info(str(tmp_path / f"o{seconds}.wav")).frames == seconds * 44100
    print(f"peak RSS MiB: {peaks}")
    # holding the extra 8 minutes even once at 48 kHz would add 88 MiB (a whole-file pipeline: several times that)
    assert peaks[600] - peaks[120] < 40, peaks


@pytest.mark.parametrize("semitones", [12, -5])
def test_streamed_phase_vocoder_equals_torchaudio(semitones):
    from gan.dsp.stream import _stretch_blocks

    cfg, n_fft, hop = DegradeConfig(), 2048, 512
    x = torch.randn(2, 96000 + 333) * 0.1
    window = torch.hann_window(n_fft)
    rate = 2.0 ** (-semitones / 12)
    spec = torch.stft(x, n_fft, hop, n_fft, window, center=True, pad_mode="reflect", return_complex=True)
    advance = torch.linspace(0, math.pi * hop, n_fft // 2 + 1, dtype=torch.float64)[..., None]
    pv = AF.phase_vocoder(spec.to(torch.complex128), rate, advance).to(spec.dtype)  # torchaudio's, in double
    ref = torch.istft(pv, n_fft, hop, n_fft, window, length=round(x.shape[-1] / rate))
    blocks, n = _stretch_blocks(tensor_blocks(x, 3000), 2, x.shape[-1], semitones, cfg, frames_per_block=40)
    y = torch.cat(list(blocks), dim=-1)
    assert y.shape == ref.shape and n == ref.shape[-1]
    assert rel_db(y, ref) < -100  # only the summation order of the overlap-add differs


def test_streamed_shift_matches_training_shifter_in_bounded_blocks(monkeypatch):
    import gan.dsp.stream as ss
    from gan.dsp.shifters import apply_shift

    cfg = DegradeConfig()
    x = torch.randn(2, 2 * 44100 + 5) * 0.1
    seen = []
    frames = ss._frames
    monkeypatch.setattr(ss, "_frames", lambda reader, k0, k1, *a: seen.append(k1 - k0) or frames(reader, k0, k1, *a))
    y = torch.cat(list(ss.stream_shift(tensor_blocks(x, 4000), 2, x.shape[-1], 44100, 7, cfg, frames_per_block=32)))
    ref = apply_shift(x, 44100, 7, cfg, "torchaudio")
    assert y.shape == ref.shape
    assert rel_db(y, ref) < -80  # both run the vocoder in double precision
    assert len(seen) > 5 and max(seen) <= math.ceil(32 * 2 ** (-7 / 12)) + 2


@pytest.mark.slow
def test_streamed_shift_equals_whole_at_60_seconds():
    """No drift with position: the accumulated phase and the time steps are double precision on both paths."""
    import gan.dsp.stream as ss
    from gan.dsp.shifters import apply_shift

    x = torch.randn(1, 60 * 48000, generator=torch.Generator().manual_seed(0)) * 0.1
    y = torch.cat(list(ss.stream_shift(tensor_blocks(x, 48000), 1, x.shape[-1], 48000, 7, DegradeConfig())), dim=-1)
    ref = apply_shift(x, 48000, 7, DegradeConfig(), "torchaudio")
    assert rel_db(y, ref) < -80
    for start in range(0, 60 * 48000, 5 * 48000):  # every 5 s, the last ones included
        part = slice(start, start + 5 * 48000)
        assert rel_db(y[:, part], ref[:, part]) < -80, start / 48000


def test_main_shifter_prefers_the_most_used_then_torchaudio():
    from gan.inference.enhance import main_shifter

    assert main_shifter(DegradeConfig(shifters={"signalsmith": 1.0, "torchaudio": 1.0})) == "torchaudio"
    assert main_shifter(DegradeConfig(shifters={"signalsmith": 2.0, "torchaudio": 1.0})) == "signalsmith"


@pytest.mark.parametrize("semitones", [-10, -3, 7])
def test_streamed_shift_handles_shifts_whose_pitch_ratio_has_a_long_numerator(semitones):
    """-10 and -3 reduce to ratios like 1723/967 (numerator > 1000); they stream like apply_shift."""
    import gan.dsp.stream as ss
    from gan.dsp.shifters import apply_shift

    cfg = DegradeConfig()
    x = torch.randn(1, 48000 + 17) * 0.1
    y = torch.cat(list(ss.stream_shift(tensor_blocks(x, 8000), 1, x.shape[-1], 48000, semitones, cfg)), dim=-1)
    ref = apply_shift(x, 48000, semitones, cfg, "torchaudio")
    assert y.shape == ref.shape
    assert rel_db(y, ref) < -50  # the whole-signal shifter's own float32 phase noise (see above)


def test_resampling_refuses_rates_that_need_a_huge_kernel():
    from gan.dsp.shifters import MAX_KERNEL_SIZE, pitch_resample_rates, sinc_kernel_size

    assert pitch_resample_rates(96000, -10) == (967, 1723)  # numerator > 1000: still a small kernel
    assert sinc_kernel_size(967, 1723) == 1723 * (967 + 2 * 7) < MAX_KERNEL_SIZE
    assert sinc_kernel_size(44100, 48000) == 160 * (147 + 2 * 7)
    with pytest.raises(AudioError, match="sample rate 44101 Hz: no exact short ratio"):
        resample_blocks(tensor_blocks(torch.zeros(1, 10)), 1, 10, 44101, 48000)


def test_a_file_truncated_mid_stream_is_one_error_and_the_others_are_still_cleaned(tmp_path, registry, capsys):
    write_checkpoint(tmp_path / "run", {"name": "toy"})
    x = (np.random.default_rng(2).standard_normal((48000 * 2, 1)) * 0.1).astype(np.float32)
    (tmp_path / "in").mkdir()
    sf.write(tmp_path / "in" / "bad.flac", x, 48000)
    data = (tmp_path / "in" / "bad.flac").read_bytes()
    (tmp_path / "in" / "bad.flac").write_bytes(data[: len(data) // 3])  # the header still says 2 s
    sf.write(tmp_path / "in" / "good.wav", x, 48000)
    enh = Enhancer(load_generator(tmp_path / "run"), chunk_seconds=0.25, device="cpu")
    with pytest.raises(AudioError, match=r"bad.flac: decoding failed after \d+ frames \(.*\); the file is damaged"):
        enh.enhance_file(tmp_path / "in" / "bad.flac", tmp_path / "o1" / "bad.flac", progress=False)
    assert not (tmp_path / "o1").exists()  # found while counting the decoded frames, before any output
    sys.path.insert(0, str(ROOT / "launch"))
    import enhance

    capsys.readouterr()
    assert enhance.main(["--checkpoint", str(tmp_path / "run"), "--quiet", "-o", str(tmp_path / "out"),
                         str(tmp_path / "in" / "bad.flac"), str(tmp_path / "in" / "good.wav")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert sum("bad.flac: decoding failed after" in line for line in err) == 1 and "1 of 2 files failed" in err[-1]
    assert sf.info(str(tmp_path / "out" / "good.wav")).frames == 96000


def test_hot_input_keeps_its_level_and_says_so(tmp_path, monkeypatch, capsys):
    """A float file above full scale is scaled into the training range for the model and back: no silent squash."""
    seen = []

    def saturating(self, x):  # a model that only works inside [-1, 1], as a tanh-output generator
        seen.append(float(x.abs().max()))
        return x.clamp(-1.0, 1.0)

    monkeypatch.setattr(Toy, "forward", saturating)
    t = np.arange(48000) / 48000
    for peak_db in (4.0, 16.0):
        x = (10 ** (peak_db / 20) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        sf.write(tmp_path / f"hot{peak_db:.0f}.wav", x, 48000, subtype="FLOAT")
        enh = enhancer(Toy(ToyConfig()), ToyConfig())
        seen.clear()
        out = enh.enhance_file(tmp_path / f"hot{peak_db:.0f}.wav", tmp_path / "out" / f"hot{peak_db:.0f}.wav",
                               progress=False)
        y, _ = sf.read(out, dtype="float32")
        assert abs(20 * np.log10(np.abs(y).max() / np.abs(x).max())) < 0.5
        assert max(seen) <= 0.99 + 1e-6
        assert f"peaks at +{peak_db:.1f} dBFS; scaled by" in capsys.readouterr().err
    quiet = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)  # in range: untouched, no note
    np.testing.assert_array_equal(enhancer(Toy(ToyConfig()), ToyConfig()).enhance(quiet).numpy(), quiet)
    assert "peaks at" not in capsys.readouterr().err


@pytest.mark.parametrize("rate", [48000, 44100, 16000])
def test_every_mode_handles_every_length(tmp_path, registry, monkeypatch, rate):
    """0 samples up: plain, shifted and shifted-only output, each the input's length."""
    monkeypatch.setattr(Toy, "forward", lambda self, x: x.clone())
    write_checkpoint(tmp_path / "run", {"name": "toy"})
    sys.path.insert(0, str(ROOT / "launch"))
    import enhance

    (tmp_path / "in").mkdir()
    lengths = [0, 1, 100, 512, 513, 3000]
    for n in lengths:
        sf.write(tmp_path / "in" / f"n{n}.wav", (np.random.default_rng(n).standard_normal(n) * 0.1).astype(np.float32),
                 rate, subtype="FLOAT")
    for args in ([], ["--shift", "3", "--write-shifted"], ["--shift", "-7"]):
        out = tmp_path / f"out{len(args)}"
        assert enhance.main(["--checkpoint", str(tmp_path / "run"), "--quiet", "-o", str(out), *args,
                             str(tmp_path / "in")]) == 0
        for n in lengths:
            names = [f"n{n}.wav"] + ([f"n{n}.shifted.wav"] if "--write-shifted" in args else [])
            for name in names:
                y, sr = sf.read(out / "in" / name, dtype="float32")
                assert sr == rate and len(y) == n, (args, name)


def test_write_shifted_is_the_shifted_input_and_needs_a_shift(tmp_path, registry, monkeypatch, capsys):
    monkeypatch.setattr(Toy, "forward", lambda self, x: 0.5 * x)  # "cleaning" halves the level
    write_checkpoint(tmp_path / "run", {"name": "toy"})
    sys.path.insert(0, str(ROOT / "launch"))
    import enhance

    x = (np.random.default_rng(1).standard_normal(48000) * 0.1).astype(np.float32)
    sf.write(tmp_path / "a.wav", x, 48000, subtype="FLOAT")
    assert enhance.main(["--checkpoint", str(tmp_path / "run"), "--quiet", "--shift", "30", "--write-shifted",
                         "-o", str(tmp_path / "out"), str(tmp_path / "a.wav")]) == 0
    assert "outside the shifts this model trained on" in capsys.readouterr().err
    cleaned, _ = sf.read(tmp_path / "out" / "a.wav", dtype="float32")
    shifted, _ = sf.read(tmp_path / "out" / "a.shifted.wav", dtype="float32")
    np.testing.assert_allclose(cleaned, 0.5 * shifted, atol=1e-6)
    assert enhance.main(["--checkpoint", str(tmp_path / "run"), "--write-shifted", "-o", str(tmp_path / "o2"),
                         str(tmp_path / "a.wav")]) == 2
    assert "--write-shifted: needs --shift" in capsys.readouterr().err
    common = ["--checkpoint", str(tmp_path / "run"), "--quiet", "-o", str(tmp_path / "o3"), str(tmp_path / "a.wav")]
    assert enhance.main([*common, "--input-shifter", "foo", "--input-shift", "3"]) == 2
    assert "--input-shifter foo: unknown; use one of torchaudio" in capsys.readouterr().err
    assert enhance.main([*common, "--input-shifter", "wsola"]) == 2
    assert "--input-shifter wsola: needs --input-shift N" in capsys.readouterr().err
    assert enhance.main([*common, "--input-shift", "3"]) == 2
    assert "--input-shift: needs --input-shifter NAME" in capsys.readouterr().err
    for bad in ("nan", "0", "30"):
        assert enhance.main([*common, "--input-shifter", "wsola", "--input-shift", bad]) == 2
        assert f"--input-shift {float(bad):g}: must be finite, non-zero and within +-24" in capsys.readouterr().err
    assert enhance.main([*common, "--input-shifter", "wsola", "--input-shift", "3", "--shift", "2"]) == 2
    assert "not with --shift" in capsys.readouterr().err
    assert enhance.main([*common, "--input-shifter", "unknown", "--input-shift", "3"]) == 2
    assert "--input-shift: not with --input-shifter unknown" in capsys.readouterr().err
    assert enhance.main([*common, "--input-shifter", "wsola", "--input-shift", "20"]) == 0
    assert "--input-shift 20 lies outside the shifts this model trained on" in capsys.readouterr().err
    assert enhance.main([*common, "--input-shifter", "wsola", "--input-shift", "3"]) == 0  # told, not conditioned
    assert "trained without generator.band_gain.condition; --input-shifter changes nothing" in capsys.readouterr().err
    np.testing.assert_allclose(sf.read(tmp_path / "o3" / "a.wav", dtype="float32")[0], 0.5 * x, atol=1e-6)


def test_checkpoint_saved_from_a_compiled_model_loads_and_load_errors_are_short(tmp_path, registry):
    from gan.train.checkpoint import CheckpointError

    cfg = {"name": "dac_unet", "channels": 4, "max_channels": 8, "strides": [2, 4]}
    model = write_checkpoint(tmp_path / "run", cfg)
    pt = tmp_path / "run" / "checkpoints" / "step_000000007" / "generator.pt"
    blob = torch.load(pt, weights_only=True)
    blob["state_dict"] = {f"_orig_mod.{k}": v for k, v in blob["state_dict"].items()}  # torch.compile's keys
    torch.save(blob, pt)
    loaded = load_generator(tmp_path / "run")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    blob["state_dict"] = {k: v for k, v in list(blob["state_dict"].items())[2:]}
    blob["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(blob, pt)
    with pytest.raises(CheckpointError) as e:
        load_generator(tmp_path / "run")
    msg = str(e.value)
    assert "2 missing (first: stem.bias)" in msg and "1 unexpected (first: extra.weight)" in msg
    assert len(msg) < 300 and "\n" not in msg
