"""The dataset-level summary of a per-case analysis, and the printed report.

Example::

    summary = summarise(spec, results)
    print(format_report(summary, [problem for result in results for problem in result.problems]))
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch

from heartseg.analysis.cases import AXES, SAMPLES_PER_CASE, CaseResult, statistics
from heartseg.data.cases import DatasetSpec
from heartseg.data.fingerprint import (
    ANISOTROPY_THRESHOLD,
    MIN_FEATURE_MAP_SIZE,
    anisotropic_axis,
    median_resampled_shape,
    pooling_text,
    suggest_target_spacing,
)
from heartseg.data.splits import grouping_text, patient_groups
from heartseg.data.validation import Problem
from heartseg.planning.config import RunConfig
from heartseg.planning.defaults import DEVICE_DEFAULTS
from heartseg.planning.plan import plan_geometry


def geometry_summary(results: list[CaseResult]) -> dict[str, Any] | None:
    headers = [r.header for r in results if r.header]
    if not headers:
        return None
    shapes, spacings = np.array([h.shape for h in headers]), np.array([h.spacing for h in headers])
    return {
        'cases': len(headers),
        'shape': {name: getattr(np, name)(shapes, axis=0).tolist() for name in ('median', 'min', 'max')},
        'spacing': {name: getattr(np, name)(spacings, axis=0).tolist() for name in ('median', 'min', 'max')},
        'orientations': dict(Counter(h.orientation for h in headers).most_common()),
        'dtypes': dict(Counter(r.dtype for r in results if r.dtype).most_common()),
        'scaled_cases': sum(r.scaling is not None for r in results),
    }


def plan_summary(results: list[CaseResult]) -> dict[str, Any] | None:
    """Target spacing, patch size and network as ``heartseg.planning.plan_geometry`` plans them for a CPU,
    at the suggested spacing and at the CPU's."""
    headers = [r.header for r in results if r.header and r.split == 'training']
    if not headers:
        return None
    target = suggest_target_spacing(headers)
    median_spacing = np.median([h.spacing for h in headers], axis=0)
    cpu = torch.device('cpu')
    _, patch, network = plan_geometry(headers, cpu, RunConfig.levels, target_spacing=target)
    cpu_spacing, cpu_patch, _ = plan_geometry(headers, cpu, RunConfig.levels)
    thick = anisotropic_axis(headers)
    return {
        'target_spacing': list(target),
        'median_spacing': median_spacing.tolist(),
        'anisotropic_axis': None if thick is None else AXES[thick],
        'median_resampled_shape': list(median_resampled_shape(headers, target)),
        'patch_size': list(patch),
        'patch_extent_mm': [p * s for p, s in zip(patch, target)],
        'patch_divisor': list(network.divisors),
        'pool_sizes': network.pool_sizes,
        'levels': network.levels,
        'patch_voxel_budget': DEVICE_DEFAULTS['cpu'].patch_voxels,
        'cpu_training_spacing': list(cpu_spacing),
        'cpu_training_patch_size': list(cpu_patch),
    }


def intensity_summary(results: list[CaseResult]) -> dict[str, Any]:
    """Pooled statistics of the per-case samples (nnU-Net's normalisation fingerprint)."""
    training = [r for r in results if r.split == 'training']
    summary: dict[str, Any] = {'samples_per_case': SAMPLES_PER_CASE}
    for region, attribute in (('foreground', 'foreground_sample'), ('background', 'background_sample')):
        pooled = np.concatenate([getattr(r, attribute) for r in training] or [np.empty(0, np.float32)])
        stats = statistics(pooled)
        summary[region] = stats and {**stats, 'median': float(np.median(pooled))}
    return summary


def label_summary(results: list[CaseResult], spec: DatasetSpec) -> dict[str, Any]:
    """Per foreground label: class balance and the spread of structure volumes."""
    measured = [r for r in results if r.split == 'training' and r.volumes_ml is not None]
    total_ml = [float(np.prod(r.header.shape) * np.prod(r.header.spacing)) / 1000 for r in measured]
    summary = {}
    for value in spec.foreground_labels:
        volumes = np.array([r.volumes_ml[value] for r in measured])
        if not volumes.size:
            continue
        fractions = volumes / np.array(total_ml)
        summary[str(value)] = {
            'name': spec.labels[value],
            'voxel_fraction': float(volumes.sum() / sum(total_ml)),
            'case_fraction': {
                'median': float(np.median(fractions)),
                'min': float(fractions.min()),
                'max': float(fractions.max()),
            },
            'cases_present': int(np.count_nonzero(volumes)),
            'cases_measured': len(measured),
            'volume_ml': {
                'median': float(np.median(volumes)),
                'p25': float(np.percentile(volumes, 25)),
                'p75': float(np.percentile(volumes, 75)),
                'min': float(volumes.min()),
                'min_case': measured[int(volumes.argmin())].case_id,
                'max': float(volumes.max()),
                'max_case': measured[int(volumes.argmax())].case_id,
            },
        }
    return summary


def bbox_summary(results: list[CaseResult]) -> dict[str, list[float]] | None:
    """Median and largest foreground extent in mm: what a patch has to see."""
    extents = [
        np.diff(r.foreground_bbox, axis=1)[:, 0] * np.array(r.header.spacing) for r in results if r.foreground_bbox
    ]
    if not extents:
        return None
    return {'median': np.median(extents, axis=0).tolist(), 'max': np.max(extents, axis=0).tolist()}


def summarise(spec: DatasetSpec, results: list[CaseResult]) -> dict[str, Any]:
    splits = Counter(r.split for r in results)
    return {
        'dataset': {
            'name': spec.name,
            'root': str(spec.root),
            'labels': {str(k): v for k, v in spec.labels.items()},
            'modalities': {str(k): v for k, v in spec.modalities.items()},
            'training_cases': splits['training'],
            'test_cases': splits['test'],
        },
        'patients': patient_summary([case.case_id for case in spec.cases]),
        'geometry': {split: geometry_summary([r for r in results if r.split == split]) for split in splits},
        'plan': plan_summary(results),
        'intensity': intensity_summary(results),
        'labels': label_summary(results, spec),
        'foreground_extent_mm': bbox_summary(results),
    }


def patient_summary(case_ids: list[str]) -> dict[str, Any]:
    """The patients the training cases belong to (:func:`heartseg.data.splits.patient_of`):
    how seeded splits group them."""
    groups = patient_groups(case_ids)
    several = {patient: cases for patient, cases in groups.items() if len(cases) > 1}
    return {
        'patients': len(groups),
        'cases': len(case_ids),
        'with_several_scans': len(several),
        'grouping': grouping_text(case_ids, True),
        'example': dict(list(several.items())[:1]),
    }


def _patient_lines(patients: dict[str, Any]) -> list[str]:
    example = ''.join(f'; e.g. {patient}: {", ".join(cases)}' for patient, cases in patients['example'].items())
    return [f'Patients: seeded splits go {patients["grouping"]}{example}', '']


def _vector(values: Any, digits: int = 4) -> str:
    return '(' + ', '.join(f'{float(v):.{digits}g}' for v in values) + ')'


def _counts(counter: dict[str, int]) -> str:
    return ', '.join(f'{name} x{count}' for name, count in counter.items())


def format_report(summary: dict[str, Any], problems: list[Problem]) -> str:
    dataset = summary['dataset']
    lines = [
        f'Dataset {dataset["name"]} ({dataset["root"]}): '
        f'{dataset["training_cases"]} training cases, {dataset["test_cases"]} test cases',
        'Labels: ' + ', '.join(f'{k} {v}' for k, v in dataset['labels'].items()),
        '',
    ]
    lines += _patient_lines(summary['patients'])
    lines += _geometry_lines(summary['geometry'])
    lines += _plan_lines(summary['plan'], summary['foreground_extent_mm'])
    lines += _intensity_lines(summary['intensity'])
    lines += _label_lines(summary['labels'])
    lines += _problem_lines(problems)
    return '\n'.join(lines)


def _geometry_lines(geometry: dict[str, Any]) -> list[str]:
    lines = ['Geometry (canonical RAS axis order)']
    for split, stats in geometry.items():
        if stats is None:
            lines.append(f'  {split}: no readable case')
            continue
        lines += [
            f'  {split} ({stats["cases"]} readable cases)       median                   min                      max',
            '    shape (voxels)   ' + ''.join(f'{_vector(stats["shape"][k]):25}' for k in ('median', 'min', 'max')),
            '    spacing (mm)     ' + ''.join(f'{_vector(stats["spacing"][k]):25}' for k in ('median', 'min', 'max')),
            f'    orientation: {_counts(stats["orientations"])};  data type on disk: {_counts(stats["dtypes"])}'
            + (
                f';  {stats["scaled_cases"]} cases scaled by scl_slope/scl_inter (read as float)'
                if stats['scaled_cases']
                else ''
            ),
        ]
    return lines + ['']


def _plan_lines(plan: dict[str, Any] | None, extent: dict[str, list[float]] | None) -> list[str]:
    if plan is None:
        return ['Plan: no readable training case to plan from', '']
    rule = (
        f'axis {plan["anisotropic_axis"]} is, so it uses its 10th percentile, no finer than the other axes'
        if plan['anisotropic_axis']
        else 'no axis is'
    )
    budget = plan['patch_voxel_budget']
    lines = [
        'Plan (nnU-Net rules, computed by the fingerprint.py functions main.py plans with)',
        f'  target spacing {_vector(plan["target_spacing"])} mm: the median spacing per axis over training cases; '
        f"an axis over {ANISOTROPY_THRESHOLD:g}x the others' spacing and "
        f'{ANISOTROPY_THRESHOLD:g}x shorter in voxels would use its '
        f'10th percentile instead ({rule}).',
        f'  patch size {plan["patch_size"]} voxels = {_vector(plan["patch_extent_mm"])} mm: '
        'the median case shape after resampling, '
        f'{_vector(plan["median_resampled_shape"])}, rounded up to multiples of {plan["patch_divisor"]} per axis '
        f"(each axis's total pooling), then the axis longest in mm shrunk by its multiple until it fits "
        f"main.py's CPU budget of {budget:,} voxels (main.py may adjust for its device, e.g. "
        'a larger patch budget on a GPU).',
        f'  network pooling per level ({plan["levels"]} levels): '
        f'{pooling_text(plan["pool_sizes"])} (an axis is pooled while its spacing '
        'is under twice the finest and its feature map at least '
        f'{2 * MIN_FEATURE_MAP_SIZE} voxels; its kernel is 1 before).',
        f'  main.py on a CPU trains at {_vector(plan["cpu_training_spacing"])} mm '
        f'(no finer than {DEVICE_DEFAULTS["cpu"].min_spacing_mm:g} mm there) '
        f'with patch {plan["cpu_training_patch_size"]}.',
    ]
    if extent:
        lines.append(
            f'  foreground bounding box extent: median {_vector(extent["median"])} mm, '
            f'largest {_vector(extent["max"])} mm'
        )
    return lines + ['']


def _intensity_lines(intensity: dict[str, Any]) -> list[str]:
    lines = [
        f'Intensity, pooled from up to {intensity["samples_per_case"]:,} '
        'voxels per training case (foreground = label > 0)'
    ]
    for region in ('foreground', 'background'):
        stats = intensity[region]
        if stats:
            lines.append(
                f'  {region:10}  mean {stats["mean"]:.4g}  std {stats["std"]:.4g}  median {stats["median"]:.4g}  '
                f'0.5-99.5 percentile [{stats["p0.5"]:.4g}, '
                f'{stats["p99.5"]:.4g}]  range [{stats["min"]:.4g}, {stats["max"]:.4g}]'
            )
    lines.append(
        '  main.py z-scores each image on its own; '
        'the foreground percentiles are the clipping range nnU-Net would use for CT-like data.'
    )
    return lines + ['']


def _label_lines(labels: dict[str, Any]) -> list[str]:
    lines = ['Class balance and structure volumes (training cases)']
    for value, stats in labels.items():
        volume, fraction = stats['volume_ml'], stats['case_fraction']
        lines += [
            f'  {value} {stats["name"]}: {stats["voxel_fraction"]:.2%} '
            f'of all voxels (per case median {fraction["median"]:.2%}, '
            f'range {fraction["min"]:.2%}-{fraction["max"]:.2%}); '
            f'present in {stats["cases_present"]}/{stats["cases_measured"]} cases',
            f'      volume mL: median {volume["median"]:.4g}, IQR {volume["p25"]:.4g}-{volume["p75"]:.4g}, '
            f'min {volume["min"]:.4g} ({volume["min_case"]}), max {volume["max"]:.4g} ({volume["max_case"]})',
        ]
    if not labels:
        lines.append('  no label could be measured')
    return lines + ['']


def _problem_lines(problems: list[Problem]) -> list[str]:
    if not problems:
        return ['Integrity: no problems found']
    cases = len({p.case_id for p in problems})
    lines = [f'Integrity: {len(problems)} problems in {cases} cases']
    lines += [f'  {p.case_id}  {p.kind}{" (warning)" if p.is_warning else ""}  {p.file}: {p.message}' for p in problems]
    return lines


# ---------------------------------------------------------------------------
# Files
