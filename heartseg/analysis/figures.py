"""What ``analyze_data.py`` writes: ``fingerprint.json``, ``cases.csv`` and the PNG figures.

Every file is written to a temporary name and renamed, so a failed run leaves
no half-written output.

Example::

    write_tables(output, summary, results, problems, spec)
    write_figures(output, results, summary, spec)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from heartseg.analysis.cases import AXES, PERCENTILES, CaseResult
from heartseg.data.cases import DatasetSpec
from heartseg.data.validation import PROBLEM_KINDS, Problem
from heartseg.files import atomic_savefig, atomic_write_text, write_rows_csv

STAT_KEYS = ('min', 'max', 'mean', 'std', 'p0.5', 'p99.5')
MONTAGE_COLUMNS = 10
MONTAGE_MAX_CASES = 120


def case_record(result: CaseResult) -> dict[str, Any]:
    header = result.header
    return {
        'case_id': result.case_id,
        'split': result.split,
        'image': result.image,
        'label': result.label,
        'shape': list(header.shape) if header else None,
        'spacing': list(header.spacing) if header else None,
        'orientation': header.orientation if header else None,
        'dtype': result.dtype,
        'scaling': list(result.scaling) if result.scaling else None,
        'intensity': {'image': result.image_stats, 'foreground': result.foreground_stats},
        'volume_ml': None if result.volumes_ml is None else {str(k): v for k, v in result.volumes_ml.items()},
        'foreground_fraction': result.foreground_fraction,
        'foreground_bbox': result.foreground_bbox,
        'problems': [p.kind for p in result.problems],
    }


def csv_row(record: dict[str, Any], foreground_labels: list[int]) -> dict[str, Any]:
    row = {key: record[key] for key in ('split', 'case_id', 'image', 'label', 'orientation', 'dtype')}
    row['scl_slope'], row['scl_inter'] = record['scaling'] or (None, None)
    for key in ('shape', 'spacing'):
        row.update({f'{key}_{name}': record[key][axis] if record[key] else None for axis, name in enumerate(AXES)})
    for region, stats in record['intensity'].items():
        row.update({f'{region}_{key}': (stats or {}).get(key) for key in STAT_KEYS})
    row['foreground_fraction'] = record['foreground_fraction']
    for axis, name in enumerate(AXES):
        box = record['foreground_bbox']
        row[f'bbox_{name}_start'], row[f'bbox_{name}_stop'] = box[axis] if box else (None, None)
    for value in foreground_labels:
        row[f'volume_ml_{value}'] = (record['volume_ml'] or {}).get(str(value))
    row['problems'] = ' '.join(record['problems'])
    return {
        key: '' if value is None else f'{value:.6g}' if isinstance(value, float) else value
        for key, value in row.items()
    }


def to_json(value: Any) -> Any:
    """Plain JSON types; NaN becomes null."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_tables(
    output: Path, summary: dict[str, Any], results: list[CaseResult], problems: list[Problem], spec: DatasetSpec
) -> list[Path]:
    records = [case_record(r) for r in results]
    fingerprint = {
        **summary,
        'problem_kinds': PROBLEM_KINDS,
        'problems': [vars(p) for p in problems],
        'cases': records,
    }
    atomic_write_text(output / 'fingerprint.json', json.dumps(to_json(fingerprint), indent=1))
    write_rows_csv(output / 'cases.csv', [csv_row(record, spec.foreground_labels) for record in records])
    return [output / 'fingerprint.json', output / 'cases.csv']


def intensity_figure(results: list[CaseResult], intensity: dict[str, Any]) -> Figure:
    figure = Figure(figsize=(8, 4.5), layout='constrained')
    axes = figure.add_subplot()
    training = [r for r in results if r.split == 'training']
    foreground = np.concatenate([r.foreground_sample for r in training] or [np.empty(0)])
    background = np.concatenate([r.background_sample for r in training] or [np.empty(0)])
    if foreground.size and background.size:
        low, high = np.percentile(np.concatenate([foreground, background]), (0.1, 99.9))
        bins = np.linspace(low, high, 100) if high > low else 50
        axes.hist(
            background, bins=bins, density=True, histtype='stepfilled', alpha=0.5, color='tab:gray', label='background'
        )
        axes.hist(
            foreground, bins=bins, density=True, histtype='stepfilled', alpha=0.5, color='tab:red', label='foreground'
        )
        for bound in (intensity['foreground']['p0.5'], intensity['foreground']['p99.5']):
            axes.axvline(bound, color='tab:red', linestyle='--', linewidth=1)
        axes.legend(title='dashed: foreground 0.5-99.5 %')
    else:
        axes.text(0.5, 0.5, 'no labelled voxels to compare', ha='center', transform=axes.transAxes)
    axes.set(
        xlabel='intensity', ylabel='density', title=f'Intensity, pooled samples from {len(training)} training cases'
    )
    return figure


def geometry_figure(results: list[CaseResult]) -> Figure:
    """Spacing (top) and shape (bottom) scatter plots for each pair of axes."""
    figure = Figure(figsize=(12, 7.5), layout='constrained')
    measured = [r for r in results if r.header]
    outlier = np.array([any(p.kind == 'spacing_outlier' for p in r.problems) for r in measured], dtype=bool)
    for row, (name, unit) in enumerate((('spacing', 'mm'), ('shape', 'voxels'))):
        values = np.array([getattr(r.header, name) for r in measured], dtype=float).reshape(-1, 3)
        for column, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            axes = figure.add_subplot(2, 3, row * 3 + column + 1)
            axes.scatter(values[~outlier, a], values[~outlier, b], s=14, alpha=0.6, label='cases')
            if outlier.any():
                axes.scatter(
                    values[outlier, a], values[outlier, b], s=30, color='tab:red', marker='x', label='spacing outlier'
                )
                axes.legend(fontsize=7)
            axes.set(xlabel=f'{name} {AXES[a]} ({unit})', ylabel=f'{name} {AXES[b]} ({unit})')
            axes.grid(alpha=0.3)
    figure.suptitle(f'Spacing and shape of {len(measured)} cases (canonical RAS axes; identical cases overlap)')
    return figure


def volume_figure(results: list[CaseResult], spec: DatasetSpec) -> Figure:
    figure = Figure(figsize=(8, 4.5), layout='constrained')
    axes = figure.add_subplot()
    measured = [r for r in results if r.volumes_ml is not None]
    for value in spec.foreground_labels:
        volumes = [r.volumes_ml[value] for r in measured]
        if volumes:
            axes.hist(
                volumes,
                bins=min(30, max(5, len(volumes) // 2)),
                alpha=0.6,
                label=f'{value} {spec.labels[value]} (median {np.median(volumes):.4g} mL)',
            )
    if measured:
        axes.legend()
    axes.set(
        xlabel='structure volume (mL)', ylabel='cases', title=f'Structure volumes of {len(measured)} labelled cases'
    )
    return figure


def montage_figure(results: list[CaseResult], spec: DatasetSpec) -> Figure:
    """One axial slice per case through the label centroid, label contours on top."""
    shown = [r for r in results if r.slice_image is not None][:MONTAGE_MAX_CASES]
    columns = max(1, min(MONTAGE_COLUMNS, len(shown)))
    rows = max(1, math.ceil(len(shown) / columns))
    figure = Figure(figsize=(max(8.0, 1.6 * columns), 1.75 * rows + 0.7), layout='constrained')
    colours = ('red', 'yellow', 'cyan', 'lime', 'magenta', 'orange')
    for index, result in enumerate(shown):
        axes = figure.add_subplot(rows, columns, index + 1)
        _draw_tile(axes, result, spec.foreground_labels, colours)
    labelled = sum(r.slice_image is not None for r in results)
    legend = ', '.join(f'{colours[i % len(colours)]}: {spec.labels[v]}' for i, v in enumerate(spec.foreground_labels))
    figure.suptitle(
        f'Axial slice through the label centroid, {len(shown)} of {labelled} labelled cases\n'
        f'radiological view (patient right on the left, anterior up); {legend}; red title: case has problems',
        fontsize=9,
    )
    return figure


def _draw_tile(axes: Any, result: CaseResult, foreground_labels: list[int], colours: tuple[str, ...]) -> None:
    # Rows = anterior-posterior, columns = right-left flipped: the radiological convention.
    image = result.slice_image.T[::-1, ::-1]
    label = result.slice_label.T[::-1, ::-1]
    low, high = np.percentile(image[np.isfinite(image)], PERCENTILES) if np.isfinite(image).any() else (0, 1)
    spacing = result.header.spacing
    axes.imshow(image, cmap='gray', vmin=low, vmax=high, aspect=spacing[1] / spacing[0], interpolation='nearest')
    for index, value in enumerate(foreground_labels):
        if (label == value).any():
            axes.contour(label == value, levels=[0.5], colors=colours[index % len(colours)], linewidths=0.8)
    volume = sum(result.volumes_ml.values()) if result.volumes_ml else 0.0
    axes.set_title(
        f'{_short(result.case_id)}\n{volume:.3g} mL', fontsize=5.5, color='red' if result.problems else 'black', pad=2
    )
    axes.set_axis_off()


def _short(case_id: str, length: int = 22) -> str:
    half = (length - 1) // 2
    return case_id if len(case_id) <= length else f'{case_id[:half]}…{case_id[-half:]}'


def write_figures(output: Path, results: list[CaseResult], summary: dict[str, Any], spec: DatasetSpec) -> list[Path]:
    figures = {
        'intensity_histograms.png': intensity_figure(results, summary['intensity']),
        'spacing_shape.png': geometry_figure(results),
        'structure_volumes.png': volume_figure(results, spec),
        'montage.png': montage_figure(results, spec),
    }
    for name, figure in figures.items():
        atomic_savefig(figure, output / name)
    return [output / name for name in figures]
