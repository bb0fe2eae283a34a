"""Predict label masks for new scans, in each scan's exact grid, say how far to trust each, and evaluate them.

Every mask has the input's shape, affine, qform/sform and orientation. The
checkpoint carries everything else: architecture, spacing, normalisation,
patch size and label values. Several checkpoints, or a cross-validation run
folder, predict as one ensemble. An ONNX or TorchScript file written by
export.py runs through the same steps.

Quality control is on by default: qc.csv gives each mask a predicted Dice, a
flag and the reasons, and review.html shows the cases worst first
(heartseg/qc.py). A stopped run over a folder, started again with the same
command, skips the cases it finished. ``torchrun --nproc_per_node=N predict.py``
shares the cases out over N processes, one GPU each.

Example:
    python predict.py --checkpoint runs/la/best.pt --input scans/ --output masks/
    python predict.py --checkpoint runs/la/best.pt --input ../shared/data/LA2018/dataset.json \\
        --subset validation --output masks/ --labels ../shared/data/LA2018/labelsTr
    python predict.py --checkpoint runs/cv --input scans/ --output masks/   # the 5-fold ensemble
    python predict.py --checkpoint la.onnx --input scans/ --output masks/   # a file from export.py
    torchrun --nproc_per_node=4 predict.py --checkpoint runs/la --input scans/ --output masks/
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from heartseg import distributed
from heartseg.cli import DefaultsHelpFormatter, Parser, integer, number, user_path
from heartseg.data.cases import case_id_from_path, folder_case_ids
from heartseg.data.dataset import read_dataset
from heartseg.errors import EXIT_USER_ERROR, DiskFull, UserError, run_cli
from heartseg.files import canonical_folder, ensure_writable_dir, file_digest, save_nifti
from heartseg.folder_lock import LOCK_NAME, folder_lock
from heartseg.inference.postprocessing import Postprocessing
from heartseg.inference.prediction import MIRRORING_TTA, Predictor, read_reference, score_case
from heartseg.inference.prediction_folder import NOT_YET, PredictionFolder
from heartseg.inference.sliding_window import BLENDINGS, DEFAULT_BLENDING, DEFAULT_WINDOW_BATCH
from heartseg.planning.config import DEFAULT_OVERLAP
from heartseg.quality.qc import assess, measure, uncertainty_map
from heartseg.quality.review import orthogonal_views, save_png
from heartseg.run.crossval import fold_checkpoints, is_cross_validation, postprocessing_of, resolve_checkpoints

NIFTI_SUFFIXES = ('.nii.gz', '.nii')
OVERVIEW_HEIGHT = 360  # pixels of --png's pictures; the review page's thumbnails are smaller
# Reading and resampling the next case in a thread while this one predicts made a 2-core CPU 11 % slower
# (the two compete for the cores; BENCHMARKS.md "Quality control"), so it is off unless asked for.
PREFETCH = False


@dataclass(frozen=True)
class InputCase:
    case_id: str
    image: Path
    label: Path | None = None  # the reference a dataset.json names


@dataclass(frozen=True)
class PredictionJob:
    """Cases and the checkpoints (one model or an ensemble) that predict them."""

    checkpoints: list[Path]
    cases: list[InputCase]
    # None: each structure's largest component (a model with no cross-validation)
    postprocessing: Postprocessing | None = None


def gather_inputs(source: Path, subset: str) -> list[InputCase]:
    """Cases from one NIfTI file, a folder of them,
    a dataset folder's test scans, or a ``dataset.json``'s training cases."""
    if subset != 'all' and source.name != 'dataset.json':
        raise UserError('--subset', f'{subset!r} selects cases of a dataset.json --input, not of {source}')
    if source.name == 'dataset.json':
        spec = read_dataset(source.parent)
        return [InputCase(c.case_id, c.image, c.label) for c in spec.cases]
    if (source / 'dataset.json').is_file():
        test_cases = read_dataset(source).test_cases
        if not test_cases:
            raise UserError(
                source,
                'dataset holds no test scans (imagesTs/); '
                f'to predict its training cases, give {source / "dataset.json"}',
            )
        return [InputCase(c.case_id, c.image) for c in test_cases]
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.name.endswith(NIFTI_SUFFIXES) and not p.name.startswith('.'))
        if not files:
            raise UserError(source, 'folder holds no .nii or .nii.gz files')
        return [InputCase(case_id, p) for case_id, p in zip(folder_case_ids(files), files)]
    if not source.exists():
        raise UserError(source, 'input not found')
    return [InputCase(case_id_from_path(source), source)]


def prediction_jobs(
    cases: list[InputCase], subset: str, checkpoint_paths: list[Path], keep_largest: bool | None
) -> list[PredictionJob]:
    """One ensemble for all cases, or, for a split's cases, the model of each case's run, and their post-processing.

    With a cross-validation folder, ``--subset validation`` predicts each fold's
    validation cases with that fold's own model: its out-of-fold predictions.
    A cross-validation folder's masks get the post-processing its out-of-fold
    predictions chose, unless ``keep_largest`` (``--keep-largest`` or
    ``--no-keep-largest``) says otherwise.
    """
    one_folder = len(checkpoint_paths) == 1 and checkpoint_paths[0].is_dir()
    chosen = postprocessing_of(checkpoint_paths[0]) if one_folder and is_cross_validation(checkpoint_paths[0]) else None
    postprocessing = chosen if keep_largest is None else None if keep_largest else Postprocessing.none()
    if subset == 'all':
        return [PredictionJob(resolve_checkpoints(checkpoint_paths), cases, postprocessing)]
    folds = fold_checkpoints(checkpoint_paths[0]) if one_folder and is_cross_validation(checkpoint_paths[0]) else []
    if folds and subset == 'validation':
        return [
            PredictionJob([fold], select_subset(cases, subset, fold.parent / 'splits.json'), postprocessing)
            for fold in folds
        ]
    if folds:
        raise UserError(
            '--subset',
            "'training' cases of a cross-validation belong to several folds; "
            "use 'validation' (each fold's own cases) or 'all'",
        )
    checkpoints = resolve_checkpoints(checkpoint_paths)
    if len(checkpoints) > 1:
        raise UserError(
            '--subset',
            f'{subset!r} needs one checkpoint or one cross-validation folder; '
            f'an ensemble of {len(checkpoints)} checkpoints has no split of its own',
        )
    return [
        PredictionJob(checkpoints, select_subset(cases, subset, checkpoints[0].parent / 'splits.json'), postprocessing)
    ]


def select_subset(cases: list[InputCase], subset: str, splits_path: Path) -> list[InputCase]:
    try:
        wanted = set(json.loads(splits_path.read_text())[subset])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(splits_path, f'cannot read the {subset!r} split ({type(error).__name__})') from None
    selected = [case for case in cases if case.case_id in wanted]
    if not selected:
        raise UserError(
            splits_path,
            f'none of its {len(wanted)} {subset!r} cases is in the --input dataset; '
            'is it the dataset the run trained on?',
        )
    return selected


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(description=__doc__.split('\n\n')[0], formatter_class=DefaultsHelpFormatter)
    parser.add_argument(
        '--checkpoint',
        type=user_path,
        nargs='+',
        required=True,
        help='a best.pt or last.pt written by main.py, a run folder (its best.pt), an ONNX or TorchScript '
        'file written by export.py, or several: their ensemble. '
        "A cross-validation run folder means every fold's best.pt",
    )
    parser.add_argument(
        '--input',
        type=user_path,
        required=True,
        help="a .nii/.nii.gz scan, a folder of them (nnU-Net's <case>_0000 names give <case> masks), "
        'a dataset folder (its test scans, imagesTs/), '
        'or a dataset.json (its training cases, with their labels); MSD or nnU-Net v2 layout',
    )
    parser.add_argument('--output', type=user_path, required=True, help='folder for <case>.nii.gz masks (and metrics)')
    parser.add_argument(
        '--subset',
        choices=('all', 'training', 'validation'),
        default='all',
        help="with a dataset.json input: which cases of the checkpoint's run splits.json to predict "
        "(a cross-validation folder: each fold's validation cases, by that fold's model)",
    )
    parser.add_argument(
        '--labels', type=user_path, help='folder of reference <case>.nii.gz label maps: evaluate the predictions'
    )
    parser.add_argument(
        '--tta',
        action=argparse.BooleanOptionalAction,
        default=MIRRORING_TTA,
        help='mirroring test-time augmentation: the mean of the 8 axis flips (--no-tta: about 7x faster)',
    )
    parser.add_argument(
        '--keep-largest',
        action=argparse.BooleanOptionalAction,
        default=None,
        help='keep only the largest connected component of every structure, or (--no-keep-largest) of none (default: '
        "a cross-validation folder's choice, made on its out-of-fold predictions as nnU-Net makes it; "
        'every structure for other models)',
    )
    parser.add_argument(
        '--save-probabilities',
        action='store_true',
        help='also write <case>_probabilities.nii.gz (float32, one channel per label)',
    )
    parser.add_argument(
        '--png', action='store_true', help='also write <case>.png with three orthogonal slices and the mask contour'
    )
    parser.add_argument(
        '--qc',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='quality control: qc.csv (predicted Dice, flag and reasons per case), '
        'summary.json\'s "qc" and review.html',
    )
    parser.add_argument(
        '--save-uncertainty',
        action='store_true',
        help='also write <case>_uncertainty.nii.gz: '
        'per-voxel entropy (bits) of the mean probability over TTA and models',
    )
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='predict every case again; without it, a run over a folder that was stopped skips the cases it finished',
    )
    parser.add_argument(
        '--prefetch',
        action=argparse.BooleanOptionalAction,
        default=PREFETCH,
        help='read and resample the next scan in a background thread while the current one predicts',
    )
    parser.add_argument(
        '--overlap', type=number(0, below=1), default=DEFAULT_OVERLAP, help='sliding-window overlap fraction'
    )
    parser.add_argument('--blending', choices=BLENDINGS, default=DEFAULT_BLENDING, help='window blending weights')
    parser.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:N or mps')
    parser.add_argument('--batch-size', type=integer(1), default=DEFAULT_WINDOW_BATCH, help='windows per forward pass')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with distributed.session(args.device):
        return predict(args)


def predict(args: argparse.Namespace) -> int:
    jobs = prediction_jobs(gather_inputs(args.input, args.subset), args.subset, args.checkpoint, args.keep_largest)
    cases = [case for job in jobs for case in job.cases]
    refuse_overwriting_inputs(args.output, cases, args.labels)
    folder = PredictionFolder(args.output)
    created = distributed.is_main() and not args.output.exists()
    with output_lock(args.output, created):
        producers = [producer(job, args) for job in jobs]
        # Process 0 decides what is left and shares it,
        # so that no case is skipped or done twice by processes that list at different times.
        todo = distributed.broadcast(cases_to_predict(folder, jobs, producers, args) if distributed.is_main() else None)
        mine = todo[distributed.rank() :: distributed.world_size()]
        predictors = {
            index: Predictor(
                jobs[index].checkpoints,
                args.device,
                args.batch_size,
                args.overlap,
                args.blending,
                args.tta,
                jobs[index].postprocessing,
            )
            for index in {index for index, _ in mine}
        }
        announce(len(todo), predictors)
        pairs = [(predictors[index], jobs[index].cases[position], producers[index]) for index, position in mine]
        loads = prefetched(pairs, lambda pair: pair[0].load(pair[1].image), args.prefetch)
        for (predictor, case, produced_by), loading in tqdm(
            zip(pairs, loads), total=len(pairs), desc='Predicting', unit='case', disable=not distributed.is_main()
        ):
            folder.forget(case.case_id)  # until this case's files are all written, no record vouches for them
            record = {
                'case': case.case_id,
                'status': 'failed',
                'image': str(case.image),
                'mask_written': False,
                'produced_by': {**produced_by, 'input': input_identity(case.image)},
            }
            try:
                predict_case(predictor, case, loading, folder, args, record)
            except DiskFull:
                raise  # every later case would fail the same way; the finished ones stay, and the same command goes on
            except UserError as error:
                record['error'] = str(error)
                tqdm.write(f'error: {error} (case skipped)', file=sys.stderr)
            folder.write_record(record)
        distributed.barrier()
        records = [folder.read_record(c.case_id) or {} for c in cases]
        failed = sum(record.get('status') != 'ok' for record in records)
        if distributed.is_main():
            for line in folder.finish([c.case_id for c in cases], metrics=args.labels is not None, qc=args.qc):
                print(line)
            written = sum(bool(record.get('mask_written')) for record in records)
            print(
                f'{written} mask{"s" if written != 1 else ""} in {args.output}'
                + (f'; {failed} case(s) failed' if failed else '')
            )
    return EXIT_USER_ERROR if failed else 0


@contextmanager
def output_lock(output: Path, created: bool) -> Iterator[None]:
    """Process 0 holds the output folder's lock (:mod:`heartseg.folder_lock`);
    a folder it made for a run refused before writing anything goes again."""
    if not distributed.is_main():
        yield
        return
    ensure_writable_dir(output)
    try:
        with folder_lock(output):
            yield
    except UserError:
        if created and not any(path.name != LOCK_NAME for path in output.iterdir()):
            shutil.rmtree(output, ignore_errors=True)
        raise


def producer(job: PredictionJob, args: argparse.Namespace) -> dict:
    """What makes a job's masks: its model files, by content, and every setting that changes a mask."""
    postprocessing = job.postprocessing.to_dict() if job.postprocessing is not None else 'every structure'
    return {
        'models': [file_digest(path) for path in job.checkpoints],
        'settings': {
            'tta': args.tta,
            'overlap': args.overlap,
            'blending': args.blending,
            'postprocessing': postprocessing,
        },
    }


def input_identity(image: Path) -> dict:
    """The input scan a mask was made from: where it is, and its size and time (an edited or replaced scan differs)."""
    try:
        stat = image.stat()
    except OSError:  # its case fails when loaded, with the reason; until then it matches no record
        return {'path': str(image.resolve()), 'size': None, 'mtime_ns': None}
    return {'path': str(image.resolve()), 'size': stat.st_size, 'mtime_ns': stat.st_mtime_ns}


def cases_to_predict(
    folder: PredictionFolder, jobs: list[PredictionJob], producers: list[dict], args: argparse.Namespace
) -> list[tuple[int, int]]:
    """The (job, case) positions left to predict, saying why any case made before is made again."""
    todo, again = [], {}
    for index, job in enumerate(jobs):
        for position, case in enumerate(job.cases):
            produced_by = {**producers[index], 'input': input_identity(case.image)}
            reason = folder.missing(
                case.case_id, wanted_files(folder, case.case_id, args), args.labels is not None, args.qc, produced_by
            )
            if reason is None and args.overwrite:
                reason = 'asked to (--overwrite)'
            if reason is not None:
                todo.append((index, position))
                again[reason] = again.get(reason, 0) + (reason != NOT_YET)
    total = sum(len(job.cases) for job in jobs)
    if total > len(todo):
        print(
            f'{total - len(todo)} of {total} cases already predicted in this folder by these models and settings'
            + ('; nothing to do (--overwrite redoes them)' if not todo else '')
        )
    for reason, count in again.items():
        if count:
            print(f'{count} case{"s" if count > 1 else ""} {reason}: predicting {"them" if count > 1 else "it"} again')
    return todo


def announce(todo: int, predictors: dict) -> None:
    """Say how the cases left are shared, by what ensemble, with what post-processing."""
    if not distributed.is_main() or not todo:
        return
    if distributed.world_size() > 1:
        print(f'Distributed: {distributed.world_size()} processes share {todo} cases')
    models = max((len(p.models) for p in predictors.values()), default=1)
    if models > 1:
        print(f'Ensemble of {models} models: their probabilities are averaged in each input grid')
    for predictor in {p.postprocessing: p for p in predictors.values()}.values():
        print(f'Post-processing: {predictor.postprocessing.describe(predictor.outputs)}')


def prefetched(items: list, load, ahead: bool) -> Iterator[Future]:
    """``load(item)`` for each item, as futures;
    with ``ahead``, the next item loads in a thread while this one is used."""
    if not ahead:
        for item in items:
            yield _settled(load, item)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix='prefetch') as pool:
        pending = None
        for item in items:
            upcoming = pool.submit(load, item)
            if pending is not None:
                yield pending
            pending = upcoming
        if pending is not None:
            yield pending


def _settled(load, item) -> Future:
    future: Future = Future()
    try:
        future.set_result(load(item))
    except Exception as error:  # handed to the consumer, as a thread's future would
        future.set_exception(error)
    return future


def wanted_files(folder: PredictionFolder, case_id: str, args: argparse.Namespace) -> list[Path]:
    """The files this command writes for one case."""
    options = (
        (True, folder.mask),
        (args.save_probabilities, folder.probabilities),
        (args.save_uncertainty, folder.uncertainty),
        (args.png, folder.overview),
        (args.qc, folder.thumbnail),
    )
    return [path(case_id) for wanted, path in options if wanted]


def predict_case(
    predictor: Predictor,
    case: InputCase,
    loading: Future,
    folder: PredictionFolder,
    args: argparse.Namespace,
    record: dict,
) -> None:
    """Predict one case and write its files, filling in its record:
    metrics and QC row when asked, then status ``ok``."""
    prediction = predictor.predict_loaded(loading.result())
    mask, nifti = prediction.mask, prediction.nifti
    save_nifti(mask.astype(np.uint8), nifti.affine, folder.mask(case.case_id), like=nifti)
    record['mask_written'] = True
    if args.save_probabilities:
        save_nifti(
            np.moveaxis(prediction.probabilities, 0, -1).astype(np.float32),
            nifti.affine,
            folder.probabilities(case.case_id),
            like=nifti,
        )
    if args.save_uncertainty:
        save_nifti(
            uncertainty_map(prediction.probabilities), nifti.affine, folder.uncertainty(case.case_id), like=nifti
        )
    reference = (
        read_reference(label_file(args.labels, case), nifti, predictor.outputs, case.image) if args.labels else None
    )
    if args.png:
        save_png(orthogonal_views(nifti, mask, reference, height=OVERVIEW_HEIGHT), folder.overview(case.case_id))
    if reference is not None:
        record['metrics'] = score_case(case.case_id, mask, reference, nifti, predictor.outputs)
    if args.qc:
        structures = predictor.outputs.structure_masks(torch.from_numpy(mask)).numpy()
        measures = measure(
            prediction.probabilities,
            nifti.affine,
            structures,
            prediction.signals,
            predictor.training_cases,
            predictor.outputs.names,
        )
        record['qc'] = assess(measures).row(case.case_id)
        save_png(orthogonal_views(nifti, mask, reference), folder.thumbnail(case.case_id))
    record['status'] = 'ok'


def label_file(labels: Path, case: InputCase) -> Path:
    found = next(
        (labels / f'{case.case_id}{s}' for s in NIFTI_SUFFIXES if (labels / f'{case.case_id}{s}').is_file()), None
    )
    if found is None:
        raise UserError(labels / f'{case.case_id}.nii.gz', 'reference label not found')
    return found


def refuse_overwriting_inputs(output: Path, cases: list[InputCase], labels: Path | None) -> None:
    """Masks are named ``<case>.nii.gz``:
    in a scans' or the labels' folder they would replace the files they are judged by."""
    output = canonical_folder(output)
    if labels is not None and canonical_folder(labels) == output:
        raise UserError(
            output, 'is the --labels folder: the masks would overwrite the reference labels; choose another --output'
        )
    # The folder a file is listed in, not where a link there points: a mask would replace the link.
    if any(canonical_folder(case.image.parent) == output for case in cases):
        raise UserError(output, 'holds the input scans: the masks could overwrite them; choose another --output')
    if any(case.label is not None and canonical_folder(case.label.parent) == output for case in cases):
        raise UserError(
            output, "holds the dataset's reference labels: the masks would overwrite them; choose another --output"
        )


def cli() -> int:
    """The console command (pyproject.toml): one line and a non-zero exit for bad input, never a traceback."""
    return run_cli(main)


if __name__ == '__main__':
    sys.exit(cli())
