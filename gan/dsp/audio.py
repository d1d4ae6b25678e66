"""Audio file I/O and resampling shared by preprocessing, enhancement and evaluation.

Arrays are float32 ``(C, T)`` in [-1, 1]. Writing goes through soundfile; resampling
through ``torchaudio.functional.resample``.

Reading never trusts a header's frame count: a file is as long as what decodes from it.
An MP3's header length is an estimate (libmpg123's, from the file size and the first
frame's bitrate when the file has no Xing/LAME info frame) and libsndfile stops reading
there, so MPEG audio (layers I-III) decodes through miniaudio (dr_mp3) to its real end; every
other format decodes through libsndfile, read to its end. Where the header's count and the
decoded count differ, one line says so:

    note: song.mp3: header says 489212 frames, decoded 266112; using 266112

    info = audio_info("song.mp3")                       # decodes once: frames, peak
    for block in audio_blocks("song.mp3", stop=info.frames): ...   # (C, <= READ_BLOCK)
    audio, rate = read_audio("song.mp3")                # (C, T) float32, Hz
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from gan.errors import UnshiftError, first_line
from gan.log import get_logger

log = get_logger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".mp3", ".opus", ".w64", ".caf"}
READ_BLOCK = 1 << 16  # frames per block read from a file


class AudioError(UnshiftError, ValueError):
    """A file that cannot be used as audio; the message names the file, ``detail`` says why."""

    def __init__(self, message: str, detail: str | None = None):
        super().__init__(message)
        self.detail = detail or message


def _stderr(line: str) -> None:
    log.warning(line, extra={"all_ranks": True})  # also from the cache builder of another machine


@dataclass(frozen=True)
class AudioInfo:
    """A file as decoded to its end (``frames``, ``peak``) and as its header describes it."""

    frames: int  # decoded frames (samples per channel)
    samplerate: int  # Hz
    channels: int
    format: str  # soundfile's major format: "WAV", "FLAC", "MP3", ...
    subtype: str  # soundfile's subtype: "PCM_16", "FLOAT", "MPEG_LAYER_III", ...
    header_frames: int  # what the header says (libsndfile's count), never used as the length
    peak: float  # largest absolute decoded sample (inf for an infinite one; NaN ignored)


def _header(path: str | Path):
    try:
        return sf.info(str(path))
    except Exception as e:  # soundfile raises several types for bad files
        raise AudioError(f"{path}: cannot read audio ({first_line(e)})", first_line(e)) from None


def _decoded(path: str | Path, header, start: int, size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(first frame, (C, <= size) float32 block)`` from frame ``start`` or before it to the file's end.

    libsndfile seeks to ``start`` (exact for the formats it reads); MPEG audio, and a file
    that cannot seek there, decode from frame 0 (the caller drops what lies before ``start``).
    """
    if header.format == "MP3":  # MPEG layers I, II and III
        import miniaudio

        stream = miniaudio.stream_file(str(path), output_format=miniaudio.SampleFormat.FLOAT32,
                                       nchannels=header.channels, sample_rate=header.samplerate,
                                       frames_to_read=size)
        pos = 0
        for chunk in stream:  # interleaved (n * C,) at the file's own rate and channels: no conversion
            block = np.frombuffer(chunk, dtype=np.float32).reshape(-1, header.channels).T
            yield pos, block
            pos += block.shape[1]
        return
    f = sf.SoundFile(str(path))
    try:
        pos = 0
        if start:
            try:
                pos = f.seek(start)
            except Exception:  # e.g. a header longer than the audio: read from the start instead
                f.close()
                f = sf.SoundFile(str(path))
        while True:
            block = f.read(size, dtype="float32", always_2d=True)  # (n, C): only the frames read
            if not len(block):
                return
            yield pos, block.T
            pos += len(block)
    finally:
        f.close()


def audio_blocks(path: str | Path, start: int = 0, stop: int | None = None,
                 size: int = READ_BLOCK) -> Iterator[np.ndarray]:
    """Decoded frames ``[start, stop)`` (``stop=None``: to the end) as ``(C, <= size)`` float32 blocks.

    Yields only frames that were decoded: a file that ends before ``stop`` yields fewer
    (callers that need ``stop - start`` frames check the count). Raises ``AudioError``
    naming the file when it cannot be opened or decoding fails.
    """
    return _blocks(path, _header(path), start, stop, size)


def _blocks(path: str | Path, header, start: int = 0, stop: int | None = None,
            size: int = READ_BLOCK) -> Iterator[np.ndarray]:
    """``audio_blocks`` with the header already read."""
    pos = start
    try:
        for a, block in _decoded(path, header, start, size):
            b = a + block.shape[1]
            lo, hi = max(start, a), b if stop is None else min(stop, b)
            if hi > lo:
                yield np.ascontiguousarray(block[:, lo - a: hi - a])
            pos = max(pos, b)
            if stop is not None and b >= stop:
                return
    except Exception as e:  # libsndfile and miniaudio raise several types for bad data
        raise AudioError(f"{path}: decoding failed after {pos} frames ({first_line(e)}); the file is damaged or "
                         "truncated: export it again, or convert it to WAV or FLAC with ffmpeg or sox",
                         first_line(e)) from None


def _note_length(path, header_frames: int, frames: int, note: Callable[[str], None]) -> None:
    if header_frames != frames:
        note(f"note: {path}: header says {header_frames} frames, decoded {frames}; using {frames}")


def audio_info(path: str | Path, note: Callable[[str], None] = _stderr) -> AudioInfo:
    """Decode ``path`` to its end once -> ``AudioInfo`` with the decoded length and peak.

    A header whose frame count differs from the decoded one gets a one-line note through
    ``note`` (stderr by default). Raises ``AudioError`` for a file that cannot be decoded.
    """
    header = _header(path)
    frames, peak = 0, 0.0
    for block in _blocks(path, header):
        frames += block.shape[1]
        if block.size:
            peak = max(peak, float(np.abs(block).max()))  # a NaN block leaves the peak as it was
    _note_length(path, header.frames, frames, note)
    return AudioInfo(frames, int(header.samplerate), int(header.channels), header.format, header.subtype,
                     int(header.frames), peak)


def audio_rate(path: str | Path) -> int:
    """The file's sample rate (Hz) from its header; AudioError naming a file that cannot be read."""
    return int(_header(path).samplerate)


def read_audio(path: str | Path, start: int = 0, stop: int | None = None,
               note: Callable[[str], None] = _stderr) -> tuple[np.ndarray, int]:
    """Decode frames ``[start, stop)`` (default: all) -> (float32 ``(C, T)``, sample rate in Hz).

    ``T`` is what was decoded (fewer than ``stop - start`` when the file ends first). A whole
    read whose length differs from the header's gets the one-line note of ``audio_info``.
    Raises ``AudioError`` naming the file.
    """
    header = _header(path)
    blocks = list(_blocks(path, header, start, stop))
    audio = np.concatenate(blocks, axis=1) if blocks else np.zeros((header.channels, 0), np.float32)
    if start == 0 and stop is None:
        _note_length(path, header.frames, audio.shape[1], note)
    return audio, int(header.samplerate)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str | None = None,
                format: str | None = None) -> None:
    """Write float ``(C, T)`` audio; the parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, dtype=np.float32).T, sample_rate, subtype=subtype, format=format)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """``(C, T) -> (T,)`` by averaging channels."""
    return audio.mean(axis=0) if audio.shape[0] > 1 else audio[0]


def resample(audio: np.ndarray | torch.Tensor, orig_sr: int, new_sr: int):
    """Band-limited resampling along the last axis; numpy in -> numpy out."""
    if orig_sr == new_sr:
        return audio
    is_np = isinstance(audio, np.ndarray)
    if audio.shape[-1] == 0:  # torchaudio cannot reshape an empty signal
        return audio[..., :0].astype(np.float32) if is_np else audio[..., :0].float()
    x = torch.from_numpy(np.ascontiguousarray(audio)) if is_np else audio
    y = AF.resample(x.float(), orig_sr, new_sr)
    return y.numpy() if is_np else y


def find_audio_files(folder: str | Path) -> list[Path]:
    """All audio files below ``folder`` (recursive), sorted for determinism."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"audio folder {folder}: not found; point data.audio_dir at a folder of recordings")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
