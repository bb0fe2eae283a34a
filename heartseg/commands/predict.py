"""The prediction command: masks in each input scan's exact grid, with quality control and, given references,
scores; a stopped run over a folder skips the cases it finished when started again.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from heartseg import distributed
from heartseg.commands.predict_flags import build_parser
from heartseg.commands.predict_inputs import (
    InputCase,
    PredictionJob,
    gather_inputs,
    label_file,
    prediction_jobs,
    refuse_overwriting_inputs,
)
from heartseg.data.cine import join_phases, phase_count, phase_ids, write_phases
from heartseg.errors import EXIT_USER_ERROR, DiskFull, UserError
from heartseg.files import ensure_writable_dir, file_digest, save_nifti
from heartseg.folder_lock import LOCK_NAME, folder_lock
from heartseg.inference.prediction import (
    TTA_MIRRORING,
    Predictor,
    TrainedModel,
    load_trained_model,
    read_reference,
    score_case,
)
from heartseg.inference.prediction_folder import NOT_YET, PredictionFolder
from heartseg.quality.cardiac_function import Structures, training_rv_lv_range, write_function_report
from heartseg.quality.qc import assess, measure, uncertainty_map
from heartseg.quality.review import orthogonal_views, save_png

CINE_PHASES = 'cine_phases'  # the output folder's subfolder for the phases of 4D cine inputs, as 3D scans
CINE_LABELS = 'labels'  # its subfolder for the phases of their 4D reference labels
OVERVIEW_HEIGHT = 360  # pixels of --png's pictures; the review page's thumbnails are smaller


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with distributed.session(args.device):
        return predict(args)


def predict(args: argparse.Namespace) -> int:
    if args.tta_mirroring is not None and not args.tta:
        raise UserError('--tta-mirroring', 'has no effect with --no-tta')
    args.tta_mirroring = args.tta_mirroring or TTA_MIRRORING
    jobs = prediction_jobs(gather_inputs(args.input, args.subset), args.subset, args.checkpoint, args.keep_largest)
    cases = [case for job in jobs for case in job.cases]
    refuse_overwriting_inputs(args.output, cases, args.labels)
    model = load_trained_model(jobs[0].checkpoints[0], torch.device('cpu'))
    structures = function_structures(args, {int(value): name for value, name in model.labels.items()})
    # A dataset's cases are 3D scans, checked as such; scans given by file or folder may be cine series.
    from_dataset = args.input.name == 'dataset.json' or (args.input / 'dataset.json').is_file()
    cines = {} if from_dataset else {c.case_id: c for c in cases if phase_count(c.image, model.channels)}
    cine_labels = {case_id: cine_label(args.labels, case) for case_id, case in cines.items()} if args.labels else {}
    jobs = [replace(job, cases=[*expand_cines(job.cases, cines, model.channels, args.output)]) for job in jobs]
    cases = [case for job in jobs for case in job.cases]
    folder = PredictionFolder(args.output)
    created = distributed.is_main() and not args.output.exists()
    with output_lock(args.output, created):
        if distributed.is_main():
            for case in cines.values():
                write_phases(case.image, case.case_id, args.output / CINE_PHASES)
            for case_id, label in cine_labels.items():
                write_phases(label, case_id, args.output / CINE_PHASES / CINE_LABELS)
        distributed.barrier()
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
                args.tta_mirroring,
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
            done = [case for case, record in zip(cases, records) if record.get('status') == 'ok']
            function_lines, page_fields = function_report(args, structures, done, folder, model)
            ids = [c.case_id for c in cases]
            for line in folder.finish(ids, metrics=args.labels is not None, qc=args.qc, page_fields=page_fields):
                print(line)
            for line in [*join_cines(cines, {case.case_id for case in done}, folder, model.channels), *function_lines]:
                print(line)
            written = sum(bool(record.get('mask_written')) for record in records)
            print(
                f'{written} mask{"s" if written != 1 else ""} in {args.output}'
                + (f'; {failed} case(s) failed' if failed else '')
            )
    return EXIT_USER_ERROR if failed else 0


def expand_cines(
    cases: list[InputCase], cines: dict[str, InputCase], channels: int, output: Path
) -> Iterator[InputCase]:
    """Each 4D cine input (in ``cines``) as its phases (``heartseg.data.cine``), written into ``output``'s phase
    folder; other cases as they are."""
    for case in cases:
        if case.case_id not in cines:
            yield case
            continue
        for phase_id in phase_ids(case.case_id, phase_count(case.image, channels)):
            yield InputCase(phase_id, output / CINE_PHASES / f'{phase_id}.nii')


def cine_label(labels: Path, case: InputCase) -> Path:
    """A cine input's 4D reference label map, checked to hold one phase for each of the scan's."""
    label = label_file(labels, case)
    found, phases = phase_count(label, 1), phase_count(case.image, 1)
    if found != phases:
        raise UserError(label, f'holds {found or "no"} phases; its cine scan {case.image.name} has {phases}')
    return label


def reference_file(args: argparse.Namespace, case: InputCase) -> Path:
    """A case's reference label map: from ``--labels``, or for a cine phase, that phase of its 4D reference."""
    if case.image.parent == args.output / CINE_PHASES:
        return args.output / CINE_PHASES / CINE_LABELS / case.image.name
    return label_file(args.labels, case)


def join_cines(cines: dict[str, InputCase], done: set[str], folder: PredictionFolder, channels: int) -> list[str]:
    """Each 4D cine input's phase masks joined into its 4D mask, where every phase was predicted."""
    joined = []
    for case_id, case in cines.items():
        phases = phase_ids(case_id, phase_count(case.image, channels))
        if done.issuperset(phases):
            join_phases([folder.mask(phase) for phase in phases], case.image, folder.mask(case_id))
            joined.append(case_id)
    return [f'4D masks of {len(joined)} cine input(s): {", ".join(joined)}'] if joined else []


def function_structures(args: argparse.Namespace, labels: dict[int, str]) -> Structures | None:
    """The structures ``function.csv`` is computed from: ``--structures``, else found by the model's label names."""
    structures = Structures.parse(args.structures, labels) if args.structures else Structures.from_labels(labels)
    if structures is None and args.ed_first:
        raise UserError('--ed-first', 'has no effect: no label of the model is an LV cavity (see --structures)')
    return structures


def function_report(
    args: argparse.Namespace,
    structures: Structures | None,
    cases: list[InputCase],
    folder: PredictionFolder,
    model: TrainedModel,
) -> tuple[list[str], dict[str, dict]]:
    """``function.csv`` (and with ``--labels`` the references' and the agreement) for the cases predicted; the lines
    to print, and the review page's columns by case."""
    if structures is None:
        return [
            'Cardiac function: none, since no label of the model is an LV cavity (--structures LV=VALUE names one)'
        ], {}
    masks = {case.case_id: folder.mask(case.case_id) for case in cases}
    references = {case.case_id: reference_file(args, case) for case in cases} if args.labels else None
    rv_lv_range = training_rv_lv_range(model.training_cases, model.outputs.paint_values, structures)
    return write_function_report(args.output, masks, references, structures, args.ed_first, rv_lv_range)


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
            'tta_mirroring': args.tta_mirroring if args.tta else None,
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
        read_reference(reference_file(args, case), nifti, predictor.outputs, case.image) if args.labels else None
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
