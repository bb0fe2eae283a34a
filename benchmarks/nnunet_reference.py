"""nnU-Net v2 itself, side by side: its iterations per second at its own plan, \
a run of a given length, and its test masks scored.

nnU-Net is a benchmark-only dependency, in its own environment (BENCHMARKS.md
"nnU-Net v2 side by side" gives the set-up): plan and preprocess with
``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres 2d``, then

- ``speed``: training iterations per second of ``nnUNetTrainer`` at the plan's
  patch and batch, on this CPU, the median of ``--repeats`` runs;
- ``train``: ``nnUNetTrainer`` on every case (fold ``all``), its length in
  iterations split over ``--epochs`` (its poly learning rate anneals over
  them), and one validation batch per epoch: nnU-Net's shortest variant,
  ``nnUNetTrainer_1epoch``, is 250 iterations, more than a 2-core CPU makes in
  an hour at the 3d_fullres plan, so the length comes from ``speed``;
- ``predict``: ``nnUNetPredictor`` (its defaults: mirroring, Gaussian
  blending) on a folder of scans, then scored by this project's metrics into
  ``metrics.csv``, which ``benchmarks.compare_runs`` reads.

Example:
    python -m benchmarks.nnunet_reference speed --dataset 27 --configuration 3d_fullres
    python -m benchmarks.nnunet_reference train --dataset 27 --configuration 3d_fullres --iterations 120 --epochs 4
    python -m benchmarks.nnunet_reference predict --dataset 27 --configuration 3d_fullres --input test/images \
--labels test/labels --output nnunet_test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import torch

from heartseg.cli import Parser, integer, user_path
from heartseg.errors import UserError, run_cli
from heartseg.files import write_rows_csv
from heartseg.inference.prediction import evaluate_case, summarise
from heartseg.outputs import planned_outputs

TRAINER = 'nnUNetTrainer'


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest='command', required=True)
    for name in ('speed', 'train', 'predict'):
        command = commands.add_parser(name)
        command.add_argument(
            '--dataset', required=True, help='nnU-Net dataset id or name (nnUNet_preprocessed holds its plans)'
        )
        command.add_argument(
            '--configuration', default='3d_fullres', help='nnU-Net configuration (default %(default)s)'
        )
        command.add_argument(
            '--threads',
            type=integer(1),
            default=os.cpu_count(),
            help='torch threads (default: every core, as nnU-Net on a CPU)',
        )
        if name == 'speed':
            command.add_argument(
                '--iterations', type=integer(1), default=5, help='timed iterations per run, after one warm-up'
            )
            command.add_argument('--repeats', type=integer(1), default=3)
        if name == 'train':
            command.add_argument('--iterations', type=integer(1), required=True, help='training iterations in all')
            command.add_argument('--epochs', type=integer(1), default=5, help='epochs the iterations are split into')
        if name == 'predict':
            command.add_argument(
                '--input', type=user_path, required=True, help='folder of nnU-Net-named scans (<case>_0000.nii.gz)'
            )
            command.add_argument(
                '--labels', type=user_path, required=True, help='folder of reference <case>.nii.gz label maps'
            )
            command.add_argument('--output', type=user_path, required=True, help='folder for the masks and metrics.csv')
    return parser


def trainer(dataset: str, configuration: str, iterations_per_epoch: int = 250, epochs: int = 1000):
    """``nnUNetTrainer`` on fold ``all`` of the dataset, on the CPU, with the given length."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset))
    plans = load_json(join(folder, 'nnUNetPlans.json'))
    plans['continue_training'] = False  # nnunetv2 2.8's trainer pops this key, which its run_training adds
    nnunet = nnUNetTrainer(
        plans, configuration, 'all', load_json(join(folder, 'dataset.json')), device=torch.device('cpu')
    )
    nnunet.num_iterations_per_epoch, nnunet.num_val_iterations_per_epoch, nnunet.num_epochs = (
        iterations_per_epoch,
        1,
        epochs,
    )
    return nnunet


def speed(args: argparse.Namespace) -> dict:
    nnunet = trainer(args.dataset, args.configuration)
    nnunet.on_train_start()
    nnunet.train_step(next(nnunet.dataloader_train))  # warm-up
    runs = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        for _ in range(args.iterations):
            nnunet.train_step(next(nnunet.dataloader_train))
        runs.append(args.iterations / (time.perf_counter() - started))
    manager = nnunet.configuration_manager
    return {
        'configuration': args.configuration,
        'patch_size': list(manager.patch_size),
        'batch_size': manager.batch_size,
        'threads': torch.get_num_threads(),
        'iterations_per_s': [round(r, 4) for r in runs],
        'median_iterations_per_s': round(statistics.median(runs), 4),
        'seconds_per_iteration': round(1 / statistics.median(runs), 2),
    }


def train(args: argparse.Namespace) -> dict:
    nnunet = trainer(args.dataset, args.configuration, -(-args.iterations // args.epochs), args.epochs)
    started = time.perf_counter()
    nnunet.run_training()
    return {
        'configuration': args.configuration,
        'epochs': args.epochs,
        'iterations': nnunet.num_iterations_per_epoch * args.epochs,
        'wall_minutes': round((time.perf_counter() - started) / 60, 2),
        'output_folder': nnunet.output_folder,
    }


def predict(args: argparse.Namespace) -> dict:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    model_folder = get_output_folder(args.dataset, TRAINER, 'nnUNetPlans', args.configuration)
    predictor = nnUNetPredictor(device=torch.device('cpu'), perform_everything_on_device=False)
    predictor.initialize_from_trained_model_folder(model_folder, use_folds=('all',))
    args.output.mkdir(parents=True, exist_ok=True)  # nnU-Net writes into it without creating it
    started = time.perf_counter()
    predictor.predict_from_files_sequential(str(args.input), str(args.output), save_probabilities=False, overwrite=True)
    seconds = time.perf_counter() - started
    dataset_json = json.loads(Path(model_folder, 'dataset.json').read_text())
    outputs = planned_outputs('softmax', {str(v): k for k, v in dataset_json['labels'].items()}, regions=[])
    rows = []
    for mask_path in sorted(args.output.glob('*.nii.gz')):
        case_id = mask_path.name.removesuffix('.nii.gz')
        image = args.input / f'{case_id}_0000.nii.gz'
        if not image.is_file():
            raise UserError(image, 'scan of a predicted mask not found')
        mask = nib.load(mask_path)
        rows += evaluate_case(
            case_id, mask.get_fdata().astype('uint8'), mask, args.labels / mask_path.name, outputs, image
        )
    write_rows_csv(args.output / 'metrics.csv', rows)
    cases = len({row['case'] for row in rows})
    return {
        'cases': cases,
        'seconds_per_case': round(seconds / max(cases, 1), 2),
        'dice': {stats['name']: round(stats['dice']['mean'], 4) for stats in summarise(rows).values()},
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import nnunetv2  # noqa: F401
    except ImportError:
        raise UserError(
            'nnunetv2', 'not installed here; it runs in its own environment (BENCHMARKS.md "nnU-Net v2 side by side")'
        ) from None
    torch.set_num_threads(args.threads)
    print(json.dumps({'speed': speed, 'train': train, 'predict': predict}[args.command](args), indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
