"""The commands that make and audit corpora: synth, manifest, fetch, check."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kwsbatch.cli.options import add_jobs, percent, reporter

EXIT_OK, EXIT_PARTIAL = 0, 3

SYNTH_EXAMPLES = """examples:
  kwsbatch synth --words yes,no,up,down -o data/synth
  kwsbatch synth --words on,off --per-word 50 --engines espeak-ng --seed 1 -o data/small
  kwsbatch synth --words yes,no --per-word 300 --engines piper,kokoro -o data/neural   # pip install '.[tts]'
"""


def add_synth(p: argparse.ArgumentParser) -> None:
    from kwsbatch.corpus.config import SynthConfig

    p.add_argument("--words", required=True, help="comma-separated keywords, e.g. yes,no,up,down")
    p.add_argument("-o", "--out", required=True, help="new (or empty) corpus folder")
    p.add_argument("--per-word", type=int, default=SynthConfig.per_word, help="clips per keyword")
    p.add_argument("--unknown", type=int, default=None, help="_unknown_ clips (default: 2 x per-word)")
    p.add_argument("--silence", type=int, default=None, help="_silence_ clips (default: per-word)")
    p.add_argument("--speakers", type=int, default=None, help="voice settings to sample (default: per-word)")
    p.add_argument("--engines", default=None, help="comma-separated engines: espeak-ng, flite, festival (default: those installed), piper, kokoro (pip extras)")
    p.add_argument("--unknown-words", default=None, help="word list file for _unknown_, one word per line (default: the bundled list)")
    p.add_argument("--seed", type=int, default=SynthConfig.seed, help="seeds the voices, words and placements")
    add_jobs(p, help="clips rendered at once (0: one per core)")


def run_synth(args) -> int:
    from rich.table import Table

    from kwsbatch.corpus.config import SynthConfig
    from kwsbatch.corpus.synth import read_word_list, speaker_notes, summarize, synthesize_corpus
    from kwsbatch.progress import table_console

    config = SynthConfig(
        words=tuple(w for w in args.words.split(",") if w.strip()), per_word=args.per_word, unknown=args.unknown,
        silence=args.silence, unknown_words=read_word_list(args.unknown_words) if args.unknown_words else None,
        speakers=args.speakers, engines=tuple(args.engines.split(",")) if args.engines else None, seed=args.seed,
    )
    progress = reporter(args, unit="clips")
    progress.start("synthesizing", config.n_clips)
    try:
        manifest = synthesize_corpus(config, args.out, jobs=args.jobs, progress=progress.advance)
    finally:
        progress.stop()
    counts = summarize(manifest).reset_index()
    table = Table(title=f"{len(manifest)} clips in {args.out}")
    for column in counts.columns:
        table.add_column(str(column), justify="left" if column in ("label", "engine") else "right")
    for row in counts.itertuples(index=False):
        table.add_row(*map(str, row))
    table_console().print(table)
    for note in speaker_notes(manifest):
        print(note)
    return EXIT_OK


MANIFEST_EXAMPLES = """examples:
  kwsbatch manifest speech_commands_v0.02/ -o data/sc
  kwsbatch manifest my_tree/ -o data/mine --words all --validation-percent 20
"""


def add_manifest(p: argparse.ArgumentParser) -> None:
    p.add_argument("data_dir", metavar="DIR", help="folder of <word>/ folders (and _background_noise_/)")
    p.add_argument("-o", "--out", required=True, help="folder for train.csv, val.csv, test.csv and the _silence_ clips")
    _add_split_flags(p)


def _add_split_flags(p: argparse.ArgumentParser) -> None:
    from kwsbatch.corpus.speech_commands import ManifestConfig

    p.add_argument("--words", default=None, help="comma-separated keywords; other words become _unknown_ "
                   f"(default: {','.join(ManifestConfig.words)}; 'all': every word is a class)")
    p.add_argument("--unknown-percent", type=percent, default=ManifestConfig.unknown_percent,
                   help="_unknown_ clips per split, %% of its keyword clips ('all': every one)")
    p.add_argument("--silence-percent", type=percent, default=ManifestConfig.silence_percent,
                   help="_silence_ clips per split, %% of its keyword clips")
    p.add_argument("--validation-percent", type=percent, default=ManifestConfig.validation_percent,
                   help="hash split only (no validation_list.txt)")
    p.add_argument("--testing-percent", type=percent, default=ManifestConfig.testing_percent, help="hash split only (no testing_list.txt)")
    p.add_argument("--seed", type=int, default=ManifestConfig.seed, help="which unknown clips are kept, where silence is cut")


def run_manifest(args) -> int:
    _write_manifests(args, args.data_dir, args.out)
    return EXIT_OK


def _write_manifests(args, data_dir, out) -> None:
    from rich.table import Table

    from kwsbatch.corpus.speech_commands import SPLITS, ManifestConfig, write_manifests
    from kwsbatch.progress import table_console

    words = ManifestConfig.words if args.words is None else None if args.words.strip() == "all" else tuple(args.words.split(","))
    config = ManifestConfig(words=words, unknown_percent=args.unknown_percent, silence_percent=args.silence_percent,
                            validation_percent=args.validation_percent, testing_percent=args.testing_percent, seed=args.seed)
    summary = write_manifests(data_dir, out, config)
    table = Table(title=f"{summary.total:,} clips, split by {'the list files' if summary.split_by == 'lists' else 'speaker hash'}")
    table.add_column("label")
    for split in SPLITS:
        table.add_column(split, justify="right")
    for label in sorted({label for counts in summary.counts.values() for label in counts}):
        table.add_row(label, *(f"{summary.counts[s].get(label, 0):,}" for s in SPLITS))
    table_console(stderr=True).print(table)
    if summary.listed_missing:
        print(f"warning: {summary.listed_missing} files named in the split lists are not in {data_dir}", file=sys.stderr)
    print(f"wrote {', '.join(str(Path(out) / f'{s}.csv') for s in SPLITS)}", file=sys.stderr)


FETCH_EXAMPLES = """examples:
  kwsbatch fetch speech-commands data/sc               # download, verify, unpack, write data/sc/manifests/
  kwsbatch fetch speech-commands data/sc1 --dataset-version 0.01 --no-manifest
  kwsbatch fetch speech-commands data/sc --url https://mirror.example/sc.tar.gz --sha256 skip
"""


def add_fetch(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="speech-commands")
    p.add_argument("data_dir", metavar="DIR", help="folder to unpack it into")
    p.add_argument("--dataset-version", default="0.02", help="speech-commands: 0.01 or 0.02")
    p.add_argument("--url", default=None, help="download from here instead, a mirror; the published checksum then no longer applies (default: the published URL)")
    p.add_argument("--sha256", default=None, help="require this checksum ('skip': none); default: the published one")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after unpacking")
    p.add_argument("-o", "--out", default=None, help="manifest folder (default: DIR/manifests)")
    p.add_argument("--no-manifest", action="store_true", help="only download and unpack")
    _add_split_flags(p)


def run_fetch(args) -> int:
    from kwsbatch.corpus.fetch import fetch_dataset

    result = fetch_dataset(args.dataset, args.dataset_version, args.data_dir, url=args.url, sha256=args.sha256,
                           keep_archive=args.keep_archive, reporter=reporter(args, unit="bytes"))
    print(f"{'fetched' if result.downloaded else 'already fetched'} {result.url} into {result.data_dir}", file=sys.stderr)
    if not args.no_manifest:
        _write_manifests(args, args.data_dir, args.out or Path(args.data_dir) / "manifests")
    return EXIT_OK


CHECK_EXAMPLES = """examples:
  kwsbatch check data/sc/                # train.csv, val.csv and test.csv together: leaks across splits too
  kwsbatch check clips/ --strict -o reports/clips.json
"""


def add_check(p: argparse.ArgumentParser) -> None:
    from kwsbatch.corpus.config import MAX_LISTED

    p.add_argument("inputs", nargs="+", metavar="MANIFEST|FOLDER", help="manifests, folders of train/val/test.csv, or audio folders")
    p.add_argument("-o", "--out", default=None, help="JSON report (default: reports/<first input name>/check.json)")
    p.add_argument("--strict", action="store_true", help="exit with status 3 when any problem is found")
    p.add_argument("--max-listed", type=int, default=MAX_LISTED, help="problem files listed in the JSON report, per kind")
    add_jobs(p)


def run_check(args) -> int:
    import json

    from kwsbatch.corpus.check import check_corpus, render_check
    from kwsbatch.files.atomic import atomic_write
    from kwsbatch.progress import table_console

    report = check_corpus(args.inputs, jobs=args.jobs, max_listed=args.max_listed, reporter=reporter(args))
    render_check(report, table_console())
    out = Path(args.out) if args.out else Path("reports") / Path(os.path.abspath(args.inputs[0])).stem / "check.json"
    with atomic_write(out) as f:
        f.write(json.dumps(report.as_dict(), indent=2) + "\n")
    print(f"report written to {out}", file=sys.stderr)
    return EXIT_PARTIAL if args.strict and report.problems else EXIT_OK
