r"""Score a checkpoint (or compare two) on clean recordings degraded like the training data.

    python launch/evaluate.py --checkpoint runs/demo --data data/demo --json eval.json
    python launch/evaluate.py --checkpoint runs/demo --data cache/demo --json eval.json   # a cache's val split
    python launch/evaluate.py --compare runs/a runs/b --data DIR --json cmp.json --plot cmp.png
    python launch/evaluate.py --checkpoint runs/cpu --data data/heldout --shift 12 -12 5 -3 0 \
        --shifters torchaudio,wsola,librosa --plot matrix.png   # shifter x metric matrix on unseen recordings
    python launch/evaluate.py --checkpoint runs/demo --data data/heldout --html listen/          # listening report
    python launch/evaluate.py --compare runs/a runs/b --data data/heldout --html ab/ --blind     # blind A/B test
    python launch/evaluate.py --listening-results alice.json bob.json --blind-key ab.blind-key.json   # unblinded

For every example: metrics of the degraded input and of the enhanced output against the
clean reference, and the improvement (positive = better), next to the level-matched baselines:
the degraded input and each output scaled by one gain per file to the reference's energy
(gain-matched), so "level" (what that oracle gain alone buys) and "beyond level" (gain-matched
output vs gain-matched input) tell a volume change from restoration. Prints a summary table (mean,
std, median, min, max) and writes JSON / CSV. ``--compare`` adds a paired t-test,
Wilcoxon test and 95% CI of the mean difference (B - A) per metric. ``--html DIR`` writes a
listening report (loudness-matched players, mel spectrograms, metrics); ``--blind`` makes it a
blind test, whose key (``DIR.blind-key.json`` beside the folder, or ``--blind-key``) unblinds
the listeners' answers files into a preference table (``--listening-results``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--checkpoint", help="run directory, step directory or generator.pt")
    who.add_argument("--compare", nargs=2, metavar=("CKPT_A", "CKPT_B"), help="score two checkpoints, paired")
    who.add_argument("--listening-results", nargs="+", metavar="FILE",
                     help="answers files of a blind report: print the unblinded preference table (nothing scored; "
                          "needs --blind-key)")
    p.add_argument("--data", help="folder of clean recordings, or a preprocessing cache (required to score)")
    p.add_argument("--degraded-dir", help="folder of the same file names degraded elsewhere (no on-the-fly round trip)")
    p.add_argument("--shift", type=int, nargs="+",
                   help="shifts to evaluate (default: the training config's; with --shifters: 12 -12; 0 = clean input)")
    p.add_argument("--shifters", help="comma list: degrade --data on the fly with these shifters and print the "
                                      "shifter x metric matrix (e.g. torchaudio,signalsmith,wsola,librosa,rubberband)")
    p.add_argument("--told", action="store_true",
                   help="with --shifters or a cache: tell a model trained with generator.band_gain.condition each "
                        "example's shifter and shift (default: unknown, as for a file of unknown origin)")
    p.add_argument("--split", default="val", choices=("train", "val"), help="cache split (default val)")
    p.add_argument("--metrics", help="comma list (default: lsd,mel,mrstft,si_sdr + visqol when installed; the "
                                     "speech metrics pesq,stoi,dnsmos run only when named)")
    p.add_argument("--max-seconds", type=float, help="score only the first S seconds of each recording")
    p.add_argument("--chunk-seconds", type=float, default=5.0)
    p.add_argument("--device", default=None)
    p.add_argument("--json", help="write the full report here")
    p.add_argument("--csv", help="write per-example rows here (and <name>_summary.csv beside it)")
    p.add_argument("--plot", help="PNG of per-example improvements (with --shifters: the matrix as a heat map)")
    p.add_argument("--html", metavar="DIR", help="write a listening report here: index.html, audio/, spec/")
    p.add_argument("--blind", action="store_true", help="with --html: a blind A/B test page instead")
    p.add_argument("--blind-seed", type=int, help="seed of the blind order (default: random; kept in the key)")
    p.add_argument("--blind-key", metavar="PATH",
                   help="the blind report's key file: where --blind writes it (default: DIR.blind-key.json beside "
                        "the folder, never inside it), what --listening-results unblinds with")
    p.add_argument("--html-audio", choices=("ogg", "mp3"),
                   help="audio files of the report (default ogg; blind: mp3 at a constant bitrate, A and B one size)")
    p.add_argument("--level-checks", action="store_true",
                   help="also print what the model does to digital silence, a -80 dBFS noise floor and a "
                        "+4 dBFS float input (dB)")
    p.add_argument("--quiet", action="store_true")
    return p


def _main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from gan.cpu import use_cpu_threads

    use_cpu_threads()  # a busy CPU: threads for the free cores only
    if args.listening_results:
        from gan.eval.listening_results import ListeningResultsError, format_preferences, preference_table
        from gan.eval.report import write_outputs

        if args.blind_key is None:
            raise ListeningResultsError("--listening-results needs --blind-key KEY: the key file the blind report "
                                        "wrote (by default DIR.blind-key.json beside its folder)")
        row = preference_table(args.listening_results, args.blind_key)
        print(format_preferences(row))
        write_outputs({"listening_results": row}, args.json)
        return 0
    if args.data is None:
        parser.error("--data is required with --checkpoint / --compare")
    if args.blind and not args.html:
        parser.error("--blind needs --html DIR")
    if args.blind_key and not args.blind:
        parser.error("--blind-key needs --blind (or --listening-results)")
    if args.told and not (args.shifters or (Path(args.data) / "manifest.json").is_file()):
        parser.error("--told needs --shifters or a preprocessing cache as --data (round trips whose shifter and "
                     "shift are known)")

    from gan.errors import UnshiftError
    from gan.eval.evaluation import evaluate
    from gan.eval.listening import ListeningReport
    from gan.eval.report import format_matrix, format_table, plot_improvements, plot_matrix, write_outputs

    writer = (ListeningReport(args.html, blind=args.blind, seed=args.blind_seed, audio_format=args.html_audio,
                              key_path=args.blind_key) if args.html else None)
    try:
        report = evaluate(args.compare or [args.checkpoint], args.data, shifts=args.shift,
                          degraded_dir=args.degraded_dir, split=args.split,
                          metrics=args.metrics.split(",") if args.metrics else None, max_seconds=args.max_seconds,
                          chunk_seconds=args.chunk_seconds, device=args.device, progress=not args.quiet,
                          shifters=args.shifters.split(",") if args.shifters else None,
                          on_example=writer.add if writer else None, told=args.told)
    except ValueError as e:  # bad option values (an unknown metric, --chunk-seconds 0)
        if isinstance(e, UnshiftError):
            raise
        raise UnshiftError(str(e)) from None
    print(format_table(report))
    if "matrix" in report:
        print(format_matrix(report))
    if args.level_checks:
        from gan.eval.evaluation import level_checks
        from gan.inference import Enhancer, load_generator

        for label, info in report["checkpoints"].items():
            checks = level_checks(Enhancer(load_generator(info["path"]), chunk_seconds=args.chunk_seconds,
                                           device=args.device), args.data)
            report.setdefault("level_checks", {})[label] = checks
            print(f"level checks {label}: digital silence -> {checks['silence_out_dbfs']:.1f} dBFS RMS; "
                  f"-80 dBFS noise -> {checks['noise_floor_out_dbfs']:.1f} dBFS RMS; +4 dBFS peak "
                  f"({checks['hot_source']}) -> {checks['hot_peak_change_db']:+.2f} dB")
    if writer:
        page = writer.finish(report)
        print(f"listening report: {page}" + (f" (blind, report id {report['listening']['report_id']})"
                                             if args.blind else ""))
        if args.blind:
            print(f"blind key: {writer.key_path} (unblinds the answers: keep it from the listeners)")
    write_outputs(report, args.json, args.csv)
    if args.plot:
        (plot_matrix if "matrix" in report else plot_improvements)(report, args.plot)
    return 0


def main(argv=None) -> int:
    """Exit code: 0 done, 1 finished badly (a diverged run, failed files), 2 a user error (one line on stderr)."""
    from gan.errors import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
