"""A subset of an MSD-layout dataset within a size budget, to travel to a lent GPU machine.

Cases are taken in ``dataset.json`` order while their image and label files fit
in ``--max-mib``, and copied byte for byte, so every grid and voxel is the
source's. The new ``dataset.json`` lists only them. The copy inherits the
source's licence: write it to a folder git ignores, never into the repository.
``.ci/gpu-check`` trains on such a subset of LA2018; an 8-bit re-encoding was
no way out, since LA2018's compressed images shrink only from 1.8 to 1.5 MB.

Example:
    python -m benchmarks.dataset_subset --data ../shared/data/LA2018 --output .gpu-data/LA2018 --max-mib 29
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys

from heartseg.cli import Parser, number, user_path
from heartseg.data.cases import Case
from heartseg.data.dataset import read_dataset
from heartseg.errors import UserError, run_cli
from heartseg.files import atomic_write_text, ensure_writable_dir


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data', type=user_path, required=True, help='MSD-layout dataset to copy from')
    parser.add_argument(
        '--output', type=user_path, required=True, help='new dataset folder (git-ignored, never in the repository)'
    )
    parser.add_argument(
        '--max-mib', type=number(0, inclusive=False), required=True, help='size budget of the copied files, in MiB'
    )
    return parser


def cases_within(cases: tuple[Case, ...], max_bytes: float) -> list[Case]:
    """The leading cases whose image and label files together fit in ``max_bytes``."""
    chosen, total = [], 0
    for case in cases:
        total += case.image.stat().st_size + case.label.stat().st_size
        if total > max_bytes:
            break
        chosen.append(case)
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = read_dataset(args.data)
    chosen = cases_within(spec.cases, args.max_mib * 2**20)
    if not chosen:
        raise UserError('--max-mib', f'{args.max_mib:g} MiB holds no case of {args.data}')
    for folder in ('imagesTr', 'labelsTr'):
        ensure_writable_dir(args.output / folder)
    for case in chosen:
        shutil.copyfile(case.image, args.output / 'imagesTr' / case.image.name)
        shutil.copyfile(case.label, args.output / 'labelsTr' / case.label.name)
    listing = json.loads((args.data / 'dataset.json').read_text())
    listing['training'] = [
        {'image': f'./imagesTr/{c.image.name}', 'label': f'./labelsTr/{c.label.name}'} for c in chosen
    ]
    listing.update(numTraining=len(chosen), test=[], numTest=0)
    atomic_write_text(args.output / 'dataset.json', json.dumps(listing, indent=2))
    print(
        json.dumps(
            {
                'cases': len(chosen),
                'of': len(spec.cases),
                'mib': round(sum(c.image.stat().st_size + c.label.stat().st_size for c in chosen) / 2**20, 1),
            }
        )
    )
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
