"""Hold patients out of a dataset for scoring: a training folder without them, and their scans and labels apart.

Whole patients are held out (every scan whose id :func:`heartseg.data.splits.patient_of`
maps to them), drawn by a seeded permutation of the patient ids, or named in
``--test-cases``. The training folder keeps the input's layout (MSD or nnU-Net
v2), its files linked, not copied; the test scans are linked into
``OUTPUT/test/images`` (nnU-Net's ``<case>_0000`` names for a v2 input) and
their labels into ``OUTPUT/test/labels/<case>.nii.gz``, which ``predict.py
--input OUTPUT/test/images --labels OUTPUT/test/labels`` reads. The links
inherit the source's licence: write them to a folder git ignores, never into
the repository.

Example:
    python -m benchmarks.holdout --data ../shared/data/ACDC --patients 16 --output ACDC_holdout
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from heartseg.cli import Parser, integer, user_path
from heartseg.data.cases import NNUNET_V2, Case, DatasetSpec
from heartseg.data.dataset import read_dataset
from heartseg.data.splits import patient_of
from heartseg.errors import UserError, run_cli
from heartseg.files import atomic_write_text, ensure_writable_dir


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=user_path, required=True, help='dataset folder, MSD or nnU-Net v2 raw layout')
    parser.add_argument(
        '--output',
        type=user_path,
        required=True,
        help='where to write train/ and test/ (git-ignored, never in the repository)',
    )
    held = parser.add_mutually_exclusive_group(required=True)
    held.add_argument('--patients', type=integer(1), help='hold out this many patients, drawn with --seed')
    held.add_argument(
        '--test-cases',
        type=user_path,
        help='a text file of case ids to hold out, one per line (their patients go with them)',
    )
    parser.add_argument('--seed', type=integer(0), default=0, help='seed of the drawn patients (default %(default)s)')
    return parser


def held_out_patients(spec: DatasetSpec, args: argparse.Namespace) -> set[str]:
    patients = sorted({patient_of(case.case_id) for case in spec.cases})
    if args.test_cases is not None:
        try:
            named = {line.strip() for line in args.test_cases.read_text().splitlines() if line.strip()}
        except OSError as error:
            raise UserError(args.test_cases, f'cannot read the case list ({error.strerror})') from None
        unknown = sorted(named - {case.case_id for case in spec.cases})
        if unknown:
            raise UserError(
                args.test_cases, f'names {len(unknown)} cases the dataset does not have, e.g. {unknown[0]!r}'
            )
        return {patient_of(case_id) for case_id in named}
    if args.patients >= len(patients):
        raise UserError('--patients', f'{args.patients} leaves no patient to train on: the dataset has {len(patients)}')
    return set(np.random.default_rng(args.seed).permutation(patients)[: args.patients].tolist())


def link(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    os.symlink(source.resolve(), target)


def write_training_folder(spec: DatasetSpec, cases: list[Case], output: Path) -> None:
    for folder in ('imagesTr', 'labelsTr'):
        ensure_writable_dir(output / folder)
    for case in cases:
        link(case.image, output / 'imagesTr' / case.image.name)
        link(case.label, output / 'labelsTr' / case.label.name)
    description = json.loads((spec.root / 'dataset.json').read_text())
    description.update(numTraining=len(cases), name=output.name)
    if spec.layout != NNUNET_V2:
        description['training'] = [
            {'image': f'./imagesTr/{c.image.name}', 'label': f'./labelsTr/{c.label.name}'} for c in cases
        ]
        description.update(test=[], numTest=0)
    atomic_write_text(output / 'dataset.json', json.dumps(description, indent=1))


def write_test_folder(spec: DatasetSpec, cases: list[Case], output: Path) -> None:
    for folder in ('images', 'labels'):
        ensure_writable_dir(output / folder)
    for case in cases:
        link(
            case.image, output / 'images' / (case.image.name if spec.layout == NNUNET_V2 else f'{case.case_id}.nii.gz')
        )
        link(case.label, output / 'labels' / f'{case.case_id}.nii.gz')


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = read_dataset(args.data)
    held = held_out_patients(spec, args)
    test = [case for case in spec.cases if patient_of(case.case_id) in held]
    training = [case for case in spec.cases if patient_of(case.case_id) not in held]
    write_training_folder(spec, training, args.output / 'train')
    write_test_folder(spec, test, args.output / 'test')
    atomic_write_text(args.output / 'test_cases.txt', ''.join(f'{case.case_id}\n' for case in test))
    print(
        f'{len(held)} patients ({len(test)} scans) held out in {args.output / "test"}; '
        f'{len(training)} scans to train on in {args.output / "train"}'
    )
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
