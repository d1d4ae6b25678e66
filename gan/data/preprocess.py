"""Preprocessing: an audio folder -> the training cache (``gan.data.cache``), built once.

``ensure_cache`` builds the cache when it is missing or stale, under a lock file beside
it, so one process per machine (or per shared filesystem) builds and the others wait.
Pieces are processed in a process pool; the cache is written into a hidden sibling
folder and renamed into place only when complete.
"""
from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import socket
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from gan.config import ConfigError, DataConfig, config_hash
from gan.data.cache import (FORMAT, SCALE, SPLITS, CacheError, array_name, cache_settings, sources_hash,
                            split_sizes)
from gan.data.recipe import (MAX_PEAK, bandlimit, degrade_piece, mono_model_rate, num_variants, piece_bounds,
                             piece_shifts, split_of, unit_hash)
from gan.cpu import usable_cores
from gan.dsp.audio import AudioError, audio_info, find_audio_files, read_audio
from gan.dsp.shifters import MAX_KERNEL_SIZE, MODEL_RATE, check_shifters, sinc_kernel_size
from gan.log import get_logger

log = get_logger(__name__)


# Memory one preprocessing worker may take: about 1.8 GB measured on long files (a piece and its round trips
# at 96 kHz in float64 while shifting), rounded up.
WORKER_MEMORY = 2 * 2**30


def available_memory() -> int | None:
    """Bytes of memory available to new processes: ``MemAvailable`` of /proc/meminfo (reclaimable page cache
    included), else the free physical pages; None when neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_workers() -> int:
    """Preprocessing worker processes when none are asked for: one per usable core, but at most one per
    ``WORKER_MEMORY`` (2 GB) of available memory, and at least one."""
    memory = available_memory()
    cores = usable_cores()
    return cores if memory is None else max(1, min(cores, memory // WORKER_MEMORY))


def cache_status(cfg: DataConfig) -> str:
    """``"ok"``, ``"missing"`` or ``"stale"`` for the cache at ``cfg.cache_dir``."""
    path = Path(cfg.cache_dir)
    mpath = path / "manifest.json"
    if not mpath.is_file():
        return "missing"
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError):
        return "stale"
    if cfg.cache_only:  # the user asked for this cache as it is
        return "ok"
    if manifest.get("config_hash") != config_hash(cache_settings(cfg)):
        return "stale"
    audio_dir = Path(cfg.audio_dir)
    if manifest.get("sources_hash") != sources_hash(find_audio_files(audio_dir), audio_dir):
        return "stale"
    return "ok"


def same_folder(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same folder (``~``, trailing slashes, ``..`` and links resolved)."""
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def ensure_cache(data_cfg: DataConfig, rebuild: bool = False, progress: bool = True,
                 num_workers: int | None = None) -> Path:
    """Build the cache at ``data_cfg.cache_dir`` unless an up-to-date one exists; return its path.

    A stale cache (other settings or other audio files) is rebuilt, or raises
    ``CacheError`` when ``data.on_stale_cache`` is ``error``. ``num_workers``: worker
    processes (None: ``default_workers()``, by cores and available memory; 0: in this process). Callers on several machines (or
    processes) sharing a filesystem are serialised by a lock file beside the cache, so the
    cache is built once and the others find it ready.
    """
    if data_cfg.cache_only:  # read only: no lock, so a cache on a read-only disk works
        return _ensure_cache(data_cfg, rebuild, progress, num_workers)
    lock_path = Path(data_cfg.cache_dir).parent / f".{Path(data_cfg.cache_dir).name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when this process dies
        return _ensure_cache(data_cfg, rebuild, progress, num_workers)


def _ensure_cache(data_cfg: DataConfig, rebuild: bool, progress: bool, num_workers: int | None) -> Path:
    if data_cfg.audio_dir.startswith("<"):
        raise ConfigError(f"data.audio_dir: {data_cfg.audio_dir} is a placeholder; point it at your folder of "
                          "recordings, e.g. --set data.audio_dir=/path/to/music")
    path = Path(data_cfg.cache_dir)
    if data_cfg.cache_only:
        if not (path / "manifest.json").is_file():
            raise CacheError(f"cache {path}: data.cache_only is set but there is no cache there; "
                             "build one with launch/preprocess.py or unset data.cache_only")
        return path
    if not Path(data_cfg.audio_dir).is_dir():
        raise AudioError(f"audio folder {data_cfg.audio_dir}: not found; point data.audio_dir at a folder of "
                         "recordings, or set data.cache_only=true to train from the cache in data.cache_dir as it is")
    status = cache_status(data_cfg)
    if status == "ok" and not rebuild:
        return path
    if status == "stale":
        try:
            built_from = json.loads((path / "manifest.json").read_text()).get("audio_dir", "?")
        except (OSError, ValueError):
            built_from = "?"  # unreadable: rebuilt
        if built_from != "?" and not same_folder(built_from, data_cfg.audio_dir):
            raise CacheError(f"cache {path}: holds the audio of {built_from}, not {data_cfg.audio_dir}; set "
                             "data.cache_dir to a folder of its own for this data (a cache is never replaced by "
                             "one of other recordings)")
    if status == "stale" and not rebuild and data_cfg.on_stale_cache == "error":
        raise CacheError(f"cache {path}: built for other data settings or audio files; delete it, "
                         "pass --rebuild, or set data.on_stale_cache=rebuild")
    check_shifters(data_cfg.degrade)
    build_cache(data_cfg, progress=progress, num_workers=num_workers)
    return path


def _remove_dead_partials(path: Path) -> None:
    """Delete temp folders of killed builds on this host (their process is gone)."""
    host = socket.gethostname()
    for kind in ("partial", "old"):
        prefix = f".{path.name}.{kind}-{host}-"
        for p in path.parent.glob(glob.escape(prefix) + "*"):
            pid = p.name[len(prefix):]
            if not pid.isdigit():  # another host whose name starts with ours ("box-2" for "box")
                continue
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                shutil.rmtree(p, ignore_errors=True)
            except (PermissionError, OverflowError):
                pass


def _plan(cfg: DataConfig, files: list[Path], root: Path, warn) -> tuple[list[tuple], list[dict]]:
    """Per file: decode it to its end (its length is what decodes, never its header's count; a
    difference is a note through ``warn``), check it, choose its split, cut it into pieces
    -> (tasks, skipped)."""
    tasks, skipped = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            info = audio_info(path, note=warn)  # decoded to its end: the pieces cover what the file holds
            frames, rate = info.frames, info.samplerate
        except AudioError as e:
            reason = f"unreadable ({e.detail})"
            frames, rate = 0, 0
        else:
            reason = _plan_reason(frames, rate, cfg)
        if reason:
            skipped.append({"file": rel, "reason": reason})
            warn(f"warning: skipped {rel}: {reason}")
            continue
        for k, (start, stop) in enumerate(piece_bounds(frames, rate)):
            tasks.append((str(path), rel, k, start, stop, rate, split_of(rel, cfg.val_fraction)))
    _balance_splits(tasks, cfg.val_fraction)
    return tasks, skipped


def _plan_reason(frames: int, rate: int, cfg: DataConfig) -> str | None:
    """Why a file of ``frames`` samples at ``rate`` Hz cannot be used, or None."""
    if frames <= 0:
        return "empty"
    if rate <= 0 or sinc_kernel_size(rate, MODEL_RATE) > MAX_KERNEL_SIZE:
        return (f"unsupported sample rate ({rate} Hz: resampling to {MODEL_RATE} Hz needs a huge kernel; "
                "convert it to a standard rate such as 44100 or 48000 Hz)")
    if frames < cfg.min_file_seconds * rate:
        return f"too short ({frames / rate:.2f} s < data.min_file_seconds {cfg.min_file_seconds})"
    return None


def _balance_splits(tasks: list[tuple], val_fraction: float) -> None:
    """With val_fraction > 0 and >= 2 files, neither split is left empty (lowest hash -> val, highest -> train)."""
    files = sorted({t[1] for t in tasks}, key=unit_hash)
    if val_fraction <= 0 or len(files) < 2:
        return
    splits = {t[1]: t[6] for t in tasks}
    if "val" not in splits.values():
        splits[files[0]] = "val"
    if "train" not in splits.values():
        splits[files[-1]] = "train"
    tasks[:] = [(*t[:6], splits[t[1]]) for t in tasks]


def process_piece(task: tuple, cfg: DataConfig) -> dict:
    """Worker: read one piece, mono 48 kHz, degrade by every shift -> int16 arrays or a skip reason.

    Any error in one file's work becomes a one-line skip reason, never an exception through the pool.
    """
    path, rel, piece, start, stop, rate, split = task
    out = {"file": rel, "piece": piece, "split": split, "source_rate": rate, "seconds": (stop - start) / rate}
    try:
        return _process_piece(path, rel, piece, start, stop, rate, cfg, out)
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        return {**out, "skip": f"failed ({type(e).__name__}{': ' + msg if msg else ''})"}


def _process_piece(path: str, rel: str, piece: int, start: int, stop: int, rate: int, cfg: DataConfig,
                   out: dict) -> dict:
    try:
        data, _ = read_audio(path, start, stop)  # (C, T): the decoded frames of the piece
    except AudioError as e:
        return {**out, "skip": f"unreadable ({e.detail})"}
    out["source_channels"] = int(data.shape[0])
    if data.shape[1] == 0:
        return {**out, "skip": "empty"}
    if data.shape[1] != stop - start:  # the file changed since it was planned
        return {**out, "skip": f"unreadable (decoded {data.shape[1]} of the {stop - start} frames of piece {piece})"}
    if not np.isfinite(data).all():
        return {**out, "skip": "unreadable (non-finite samples)"}
    clean = mono_model_rate(data, rate)
    if np.abs(clean).max() < 10.0 ** (cfg.silence_db / 20):
        return {**out, "skip": f"silent (peak below data.silence_db {cfg.silence_db} dB)"}
    if out["split"] == "train" and unit_hash(f"bandlimited|{cfg.seed}|{rel}#{piece}") < cfg.bandlimit_fraction:
        clean, out["bandlimit"] = bandlimit(clean, rel, piece, cfg.seed)
    shifts = piece_shifts(cfg.degrade, rel, piece)
    shifters, degraded = degrade_piece(clean, rel, piece, cfg.degrade, shifts)
    peak = max(float(np.abs(a).max()) for a in [clean, *degraded.values()])
    gain = min(1.0, MAX_PEAK / peak)

    def q(a: np.ndarray) -> np.ndarray:
        return np.round(a * (gain * SCALE)).astype(np.int16)

    return {**out, "length": len(clean), "gain": gain, "shifts": shifts,
            "shifters": {str(s): n for s, n in shifters.items()},
            "clean": q(clean), "degraded": [q(degraded[s]) for s in shifts]}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _map(tasks: list[tuple], cfg: DataConfig, num_workers: int):
    """Results of ``process_piece`` in task order, in worker processes unless num_workers is 0."""
    if num_workers == 0 or len(tasks) <= 1:
        yield from (process_piece(t, cfg) for t in tasks)
        return
    with ProcessPoolExecutor(num_workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
        yield from pool.map(process_piece, tasks, [cfg] * len(tasks))


def build_cache(cfg: DataConfig, progress: bool = True, num_workers: int | None = None,
                warn=None) -> dict:
    """Preprocess ``cfg.audio_dir`` into ``cfg.cache_dir`` (replacing what is there) -> manifest."""
    from tqdm import tqdm

    warn = warn or (lambda msg: log.warning(msg, extra={"all_ranks": True}))  # the builder of its machine
    root, path = Path(cfg.audio_dir), Path(cfg.cache_dir)
    files = find_audio_files(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(path)
    tmp = path.parent / f".{path.name}.partial-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.time()
    tasks, skipped = _plan(cfg, files, root, warn)
    workers = default_workers() if num_workers is None else num_workers
    workers = max(0, min(workers, len(tasks)))
    splits = {s: {"samples": 0, "items": []} for s in SPLITS}
    failed: dict[str, str] = {}
    try:
        with ExitStack() as stack:  # output files and the bar are closed on any error too
            outs = {}
            for split in SPLITS:
                (tmp / split).mkdir(parents=True)
                outs[split] = {k: stack.enter_context(open(tmp / split / array_name(k), "wb"))
                               for k in [None, *range(num_variants(cfg.degrade))]}
            bar = stack.enter_context(tqdm(
                total=sum((t[4] - t[3]) / t[5] for t in tasks), disable=not progress, file=sys.stderr,
                desc=f"preprocess -> {path}", dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]"))
            for res in _map(tasks, cfg, workers):
                bar.update(res["seconds"])
                if "skip" in res:
                    failed.setdefault(res["file"], res["skip"])
                    continue
                meta = splits[res["split"]]
                outs[res["split"]][None].write(res.pop("clean").tobytes())
                for k, a in enumerate(res.pop("degraded")):
                    outs[res["split"]][k].write(a.tobytes())
                meta["items"].append({**res, "offset": meta["samples"]})
                meta["samples"] += res["length"]
        done = {it["file"] for m in splits.values() for it in m["items"]}
        for rel, reason in failed.items():
            if rel not in done:  # a file is skipped when none of its pieces is usable
                skipped.append({"file": rel, "reason": reason})
                warn(f"warning: skipped {rel}: {reason}")
        if not done:
            raise CacheError(f"audio folder {root}: none of its {len(files)} audio files is usable; "
                             "point data.audio_dir at a folder of recordings")
        manifest = {
            "format": FORMAT,
            "config_hash": config_hash(cache_settings(cfg)),
            "sources_hash": sources_hash(files, root),
            "settings": cache_settings(cfg),
            "audio_dir": str(root.resolve()),  # absolute: compared whatever the working directory
            "dtype": "int16", "scale": SCALE,
            "shifts": list(cfg.degrade.shifts),
            "variants": num_variants(cfg.degrade),
            "seconds": {s: splits[s]["samples"] / MODEL_RATE for s in SPLITS},
            "build_seconds": time.time() - t0,
            "splits": splits,
            "skipped": sorted(skipped, key=lambda d: d["file"]),
            "dropped_pieces": sum(1 for t in tasks if t[1] in done) - sum(len(m["items"]) for m in splits.values()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    warn(summary(manifest, len(files), path))
    return manifest


def _replace(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` to ``path``; an old cache is moved aside first, then deleted."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(path, old)
        except FileNotFoundError:  # another build moved it aside first
            old = None
    try:
        os.replace(tmp, path)
    except OSError as e:  # ENOTEMPTY/EEXIST: another build put its cache there in between
        raise CacheError(f"cache {path}: another preprocess run wrote it at the same time ({e.strerror}); "
                         "run one preprocess per cache_dir, then retry") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def summary(manifest: dict, n_files: int, path: Path) -> str:
    """One line: what went into the cache at ``path`` and what was skipped."""
    counts: dict[str, int] = {}
    for s in manifest["skipped"]:
        kind = s["reason"].split(" (")[0]
        counts[kind] = counts.get(kind, 0) + 1
    line = (f"cache {path}: {n_files - len(manifest['skipped'])}/{n_files} files of {manifest['audio_dir']} "
            f"x {manifest['variants']} round trips (shifts {min(manifest['shifts']):+d}..{max(manifest['shifts']):+d}) "
            f"in {manifest['build_seconds']:.1f} s: {split_sizes(manifest)}")
    if counts:
        line += "; skipped " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if manifest["dropped_pieces"]:
        line += f"; dropped {manifest['dropped_pieces']} silent pieces of long files"
    return line
