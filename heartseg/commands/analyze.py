"""Analyse a dataset (MSD or nnU-Net v2 layout): per-case statistics, a training plan and integrity problems.

Checks each case's header first and reads its voxels once, only for the
statistics, in parallel worker processes. Then it prints a report and writes
``fingerprint.json`` (summary, problems and per-case statistics),
``cases.csv`` (one row per case), ``report.txt`` and PNG figures into the
output folder. Every integrity problem is listed with its case, by the same
rules training applies; the exit status is 2 when there is any error (a
warning, such as an empty label map or a spacing outlier, does not count), so a script can stop
before training on bad data.

Shapes, spacings and bounding boxes are in canonical (RAS) axis order, as
training sees the volumes; ``orientation`` is the order stored in the file.

Example:
    python analyze_data.py ../shared/data/LA2018 --output /tmp/la_analysis
    python analyze_data.py data/Task02_Heart --workers 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from heartseg.analysis.cases import analyze_cases, attach_problems, duplicate_problems, spacing_outliers, unique_tasks
from heartseg.analysis.figures import write_figures, write_tables
from heartseg.analysis.report import format_report, summarise
from heartseg.cli import Parser, integer, user_path
from heartseg.data.dataset import read_dataset
from heartseg.errors import EXIT_USER_ERROR, UserError
from heartseg.files import atomic_write_text, ensure_writable_dir

DEFAULT_OUTPUT_NAME = 'analysis'


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the docstring's example lines as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A None default means "derived"; the help text says from what.
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest.replace('``', ''), formatter_class=_HelpFormatter)
    parser.add_argument(
        'data_dir',
        type=user_path,
        metavar='DATA_DIR',
        help='dataset folder, MSD or nnU-Net v2 raw layout: dataset.json, imagesTr/, labelsTr/ and optional imagesTs/',
    )
    parser.add_argument(
        '--output',
        type=user_path,
        help='folder for the report, fingerprint.json, cases.csv and figures '
        f'(default: DATA_DIR/{DEFAULT_OUTPUT_NAME})',
    )
    parser.add_argument('--workers', type=integer(1), default=2, help='worker processes that read cases in parallel')
    return parser


def prepare_output(output: Path | None, data_dir: Path) -> Path:
    """The output folder, checked writable before any case is read."""
    if output is not None:
        ensure_writable_dir(output)
        return output
    default = data_dir / DEFAULT_OUTPUT_NAME
    try:
        ensure_writable_dir(default)
    except UserError as error:
        raise UserError(
            data_dir,
            f'cannot write the report into {default} ({error.problem}); pass --output DIR to write it elsewhere',
        ) from None
    return default


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = read_dataset(args.data_dir, allow_duplicates=True)
    entries = [('training', case) for case in spec.cases] + [('test', case) for case in spec.test_cases]
    output = prepare_output(args.output, args.data_dir)
    results = analyze_cases(unique_tasks(entries, spec), args.workers)
    attach_problems(results, duplicate_problems(entries, args.data_dir))
    spacing_outliers(results)
    problems = [problem for result in results for problem in result.problems]
    summary = summarise(spec, results)
    report = format_report(summary, problems)
    written = write_tables(output, summary, results, problems, spec) + write_figures(output, results, summary, spec)
    atomic_write_text(output / 'report.txt', report + '\n')
    print(report)
    print(f'\nWrote {output / "report.txt"}, ' + ', '.join(path.name for path in written))
    errors = [problem for problem in problems if not problem.is_warning]
    if errors:
        print(f'{len(errors)} integrity problems found (listed above); exit status {EXIT_USER_ERROR}', file=sys.stderr)
        return EXIT_USER_ERROR
    return 0
