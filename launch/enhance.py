r"""Clean audio files with a trained generator (any length, sample rate and channel count).

    python launch/enhance.py --checkpoint runs/demo -o out/ song.flac folder/
    python launch/enhance.py --checkpoint runs/demo --shift 3 -o out/ vocal.wav   # shift, then clean
    python launch/enhance.py --checkpoint runs/demo --shift 3 --write-shifted -o out/ vocal.wav
        # also out/vocal.shifted.wav: shifted only, to compare with the cleaned out/vocal.wav
    python launch/enhance.py --checkpoint runs/cond --input-shifter torchaudio --input-shift 3 -o out/ rt3.wav
        # a torchaudio round trip by +3 (up and back): a conditioned model is told so

Output files keep the input's name, sample rate, channels, format and subtype; folders
keep their layout under OUT_DIR. An input is never overwritten.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_FOLDER")
    p.add_argument("--checkpoint", required=True, help="run directory (uses checkpoints/latest), step directory "
                                                       "or generator.pt")
    p.add_argument("-o", "--out-dir", required=True, help="folder for the cleaned files")
    p.add_argument("--shift", type=float, default=0.0, help="pitch-shift by N semitones first (training shifter)")
    p.add_argument("--shifter", default=None, help="shifter for --shift (default: the one the training data used "
                                                  "most; ties: torchaudio)")
    p.add_argument("--input-shifter", default=None,
                   help="the inputs are round trips (shifted by --input-shift semitones and back) made with this "
                        "shifter; a model trained with generator.band_gain.condition is told so (default: "
                        "unknown). Not for files shifted once: told, it over-boosts them by about 3 dB")
    p.add_argument("--input-shift", type=float, default=None,
                   help="the round trip's first shift in semitones (+3: up three, then back), with --input-shifter")
    p.add_argument("--write-shifted", action="store_true",
                   help="with --shift: also write NAME.shifted.EXT, the shifted file before cleaning (A/B listening)")
    p.add_argument("--chunk-seconds", type=float, default=5.0, help="audio per generator call (default 5)")
    p.add_argument("--context-seconds", type=float, default=None,
                   help="context each side of a chunk (default: the generator's receptive field, seamless)")
    p.add_argument("--batch-size", type=int, default=4, help="chunks per generator call")
    p.add_argument("--subtype", default=None, help="soundfile subtype of the output (default: the input's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    from gan.cpu import use_cpu_threads

    use_cpu_threads()  # a busy CPU: threads for the free cores only
    from gan.dsp.audio import AudioError
    from gan.errors import UnshiftError, report
    from gan.inference import Enhancer, load_generator, output_paths

    try:
        pairs = output_paths(args.inputs, args.out_dir)
        if not pairs:
            raise AudioError(f"{' '.join(args.inputs)}: no audio files found")
        loaded = load_generator(args.checkpoint)
        enhancer = Enhancer(loaded, args.chunk_seconds, args.context_seconds, args.batch_size, args.device,
                            args.shifter)
        print(f"generator {loaded.cfg.generator.name} step {loaded.step}{' (EMA)' if loaded.ema else ''} "
              f"on {enhancer.device}", file=sys.stderr)
        trained = max(abs(s) for s in loaded.cfg.data.degrade.shifts)
        if abs(args.shift) > trained:
            print(f"warning: --shift {args.shift:g} lies outside the shifts this model trained on (up to +-{trained}); "
                  "expect less restoration", file=sys.stderr)
        if args.write_shifted and not args.shift:
            raise UnshiftError("--write-shifted: needs --shift N (without a shift there is nothing to compare)")
        told = None
        if args.input_shift is not None and args.input_shifter is None:
            raise UnshiftError("--input-shift: needs --input-shifter NAME (the shifter that shifted the inputs)")
        if args.input_shifter is not None:
            from generators.condition import FAMILIES, MAX_SHIFT

            if args.input_shifter not in (*FAMILIES, "unknown"):
                raise UnshiftError(f"--input-shifter {args.input_shifter}: unknown; use one of "
                                   f"{', '.join(FAMILIES)} or unknown")
            if args.shift:
                raise UnshiftError("--input-shifter: not with --shift (it describes inputs that were already "
                                   "round-tripped, not the shift applied here); drop one of them")
            if args.input_shifter == "unknown" and args.input_shift is not None:
                raise UnshiftError("--input-shift: not with --input-shifter unknown (an unknown round trip has no "
                                   "known shift); drop --input-shift")
            if args.input_shifter != "unknown":
                if args.input_shift is None:
                    raise UnshiftError(f"--input-shifter {args.input_shifter}: needs --input-shift N, the semitones "
                                       "the inputs were shifted by")
                told = (args.input_shifter, args.input_shift)
                if abs(args.input_shift) > trained:
                    print(f"warning: --input-shift {args.input_shift:g} lies outside the shifts this model trained "
                          f"on (up to +-{trained})", file=sys.stderr)
                try:
                    enhancer.label(told)
                except ValueError:
                    raise UnshiftError(f"--input-shift {args.input_shift:g}: must be finite, non-zero and within "
                                       f"+-{MAX_SHIFT:g} semitones; or drop --input-shifter") from None
            if not enhancer.conditioned:
                print("note: this model was trained without generator.band_gain.condition; --input-shifter "
                      "changes nothing", file=sys.stderr)
    except ValueError as e:  # bad option values (--chunk-seconds 0, an unknown --shifter)
        if isinstance(e, UnshiftError):
            raise
        raise UnshiftError(str(e)) from None
    failed = 0
    for src, dst in pairs:  # one bad file is reported and the others are still cleaned
        try:
            guess = enhancer.guess(src) if enhancer.detects and not args.shift else None
            if guess is not None:
                print(f"{src}: {guess_line(guess)}", file=sys.stderr)
            enhancer.enhance_file(src, dst, shift=args.shift, subtype=args.subtype, progress=not args.quiet,
                                  told=told)
            if args.write_shifted:
                shifted = dst.with_name(f"{dst.stem}.shifted{dst.suffix}")
                enhancer.enhance_file(src, shifted, shift=args.shift, subtype=args.subtype, progress=not args.quiet,
                                      clean=False)
                print(shifted)
        except AudioError as e:
            report(e)
            failed += 1
            continue
        print(dst)
    if failed:
        print(f"error: {failed} of {len(pairs)} files failed (see above)", file=sys.stderr)
        return 1
    return 0


def guess_line(probabilities: dict[str, float], top: int = 3) -> str:
    """``Enhancer.guess``'s probabilities -> 'the model takes it for a torchaudio round trip 68%, ...'."""
    ranked = sorted(probabilities.items(), key=lambda kv: -kv[1])[:top]
    names = [name if name == "clean input" else f"a {name} round trip" for name, _ in ranked]
    return "the model takes it for " + ", ".join(f"{n} {p:.0%}" for n, (_, p) in zip(names, ranked))


def main(argv=None) -> int:
    """Exit code: 0 done, 1 finished badly (a diverged run, failed files), 2 a user error (one line on stderr)."""
    from gan.errors import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
