"""Cardiac function from masks: ventricular volumes, stroke volumes, ejection fractions and LV mass per patient.

Computed as ACDC and UK Biobank (``ukbb_cardiac``'s ``eval_ventricular_volume.py``) compute them:

- a volume is the voxel count times the voxel volume, :math:`|\\det A_{3\\times3}|` of the header's affine
  ``A`` (so an oblique grid counts right), in millilitres;
- end-diastole (ED) is the phase with the largest LV cavity, end-systole (ES) the one with the smallest;
- stroke volume :math:`SV = EDV - ESV`, ejection fraction :math:`EF = 100\\,SV / EDV`, per ventricle;
- LV mass is :data:`MYOCARDIUM_DENSITY` (1.05 g/ml) times the myocardium's volume at ED.

The structures are found by meaning in the dataset's label names (:meth:`Structures.from_labels`:
ACDC's ``LV``, ``MYO``, ``RV`` and common aliases) or given as ``LV=3,MYO=2,RV=1``
(:meth:`Structures.parse`). The LV cavity is required; the myocardium and the RV are optional.

Example:
    >>> structures = Structures.from_labels({0: 'background', 1: 'RV', 2: 'MYO', 3: 'LV'})
    >>> structures
    Structures(lv=3, myo=2, rv=1)
    >>> ed, es = {'LV': 150.0, 'MYO': 120.0, 'RV': 160.0}, {'LV': 60.0, 'MYO': 125.0, 'RV': 80.0}
    >>> row = function_row('patient001', {'frame01': ed, 'frame12': es})
    >>> row['ed'], row['es'], row['LVEF_pct'], row['LVM_g'], row['RVEF_pct'], row['flag']
    ('frame01', 'frame12', 60.0, 126.0, 50.0, 0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from heartseg.data.splits import patient_groups
from heartseg.errors import UserError
from heartseg.files import write_rows_csv
from heartseg.quality.function_figures import write_bland_altman, write_volume_curve

MYOCARDIUM_DENSITY = 1.05  # g/ml, as ACDC and UK Biobank take it
# A plausible ejection fraction, in percent; outside it the row is flagged for a look.
EF_RANGE = (10.0, 85.0)
# A dip in the LV volume curve counts as a minimum when it is at least this share of the curve's range deep.
MINIMUM_DEPTH = 0.1
STRUCTURE_NAMES = ('LV', 'MYO', 'RV')
PAGE_INDICES = ('LVEF_pct', 'RVEF_pct', 'LVM_g')  # what the review page shows of each patient's row
FUNCTION_CURVES = 'function_curves'  # the output's subfolder for cine series' volume curves
# Label names (lower case, separators as spaces) that mean each structure.
ALIASES = {
    'LV': ('lv', 'lv cavity', 'lv blood pool', 'left ventricle', 'left ventricle cavity', 'left ventricular cavity'),
    'MYO': ('myo', 'myocardium', 'lv myocardium', 'lvm', 'left ventricular myocardium', 'left ventricle myocardium'),
    'RV': ('rv', 'rv cavity', 'rv blood pool', 'right ventricle', 'right ventricle cavity', 'right ventricular cavity'),
}
COLUMNS = (
    'patient',
    'ed',
    'es',
    'LVEDV_ml',
    'LVESV_ml',
    'LVSV_ml',
    'LVEF_pct',
    'LVM_g',
    'RVEDV_ml',
    'RVESV_ml',
    'RVSV_ml',
    'RVEF_pct',
    'flag',
    'reasons',
)
INDICES = ('LVEDV_ml', 'LVESV_ml', 'LVSV_ml', 'LVEF_pct', 'LVM_g', 'RVEDV_ml', 'RVESV_ml', 'RVSV_ml', 'RVEF_pct')


@dataclass(frozen=True)
class Structures:
    """The label values of the LV cavity and, where the model has them, the LV myocardium and the RV cavity."""

    lv: int
    myo: int | None = None
    rv: int | None = None

    @classmethod
    def from_labels(cls, labels: Mapping[int, str]) -> Structures | None:
        """The structures named in ``labels`` (value → name), or None when no label is an LV cavity."""
        found = {}
        for value, name in labels.items():
            spelled = re.sub(r'[\s_\-]+', ' ', name.strip().lower())
            for structure, aliases in ALIASES.items():
                if spelled in aliases and value != 0:
                    found.setdefault(structure, value)
        if 'LV' not in found:
            return None
        return cls(found['LV'], found.get('MYO'), found.get('RV'))

    @classmethod
    def parse(cls, text: str, labels: Mapping[int, str], flag: str = '--structures') -> Structures:
        """``LV=3,MYO=2,RV=1`` (LV required), checked against the model's label values.

        Example:
            >>> Structures.parse('LV=1', {0: 'background', 1: 'left atrium'})
            Structures(lv=1, myo=None, rv=None)
        """
        given = {}
        for part in filter(None, (piece.strip() for piece in text.split(','))):
            name, _, value = part.partition('=')
            name = name.strip().upper()
            if name not in STRUCTURE_NAMES or not value.strip().isdigit():
                raise UserError(flag, f'{part!r} is not NAME=VALUE with NAME one of {", ".join(STRUCTURE_NAMES)}')
            if int(value) not in labels or int(value) == 0:
                raise UserError(flag, f'{name}={value}: the model has no label {value} (it has {sorted(labels)})')
            given[name] = int(value)
        if 'LV' not in given:
            raise UserError(flag, 'needs LV=VALUE: the LV cavity is what the report is computed from')
        return cls(given['LV'], given.get('MYO'), given.get('RV'))

    def values(self) -> dict[str, int]:
        return {name: value for name, value in zip(STRUCTURE_NAMES, (self.lv, self.myo, self.rv)) if value is not None}


def voxel_volume_ml(affine: np.ndarray) -> float:
    """One voxel's volume in ml from the affine: :math:`|\\det A_{3\\times3}|` mm³ / 1000."""
    return abs(float(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))) / 1000.0


def phase_volumes(label_map: np.ndarray, affine: np.ndarray, structures: Structures) -> dict[str, float]:
    """Each known structure's volume in ml in one phase's label map (3D, the scan's grid)."""
    voxel = voxel_volume_ml(affine)
    return {name: float(np.count_nonzero(label_map == value)) * voxel for name, value in structures.values().items()}


def function_row(
    patient: str,
    phases: Mapping[str, Mapping[str, float]],
    ed_first: bool = False,
    rv_lv_range: tuple[float, float] | None = None,
) -> dict:
    """One patient's ``function.csv`` row from each phase's volumes (``{phase: {'LV': ml, ...}}``, in time order).

    Args:
        ed_first: ED is the first phase (UK Biobank's convention) instead of the largest LV cavity.
        rv_lv_range: The training set's lowest and highest RV/LV EDV ratio (:func:`training_rv_lv_range`);
            a ratio outside it is flagged.
    """
    names = list(phases)
    lv = [phases[name]['LV'] for name in names]
    ed = 0 if ed_first else int(np.argmax(lv))
    es = int(np.argmin(lv))
    row: dict = dict.fromkeys(COLUMNS, '')
    row.update(patient=patient, ed=names[ed])
    reasons = [f'{structure} missing in {name}' for name in names for structure, ml in phases[name].items() if ml == 0]
    if 'MYO' in phases[names[ed]]:
        row['LVM_g'] = _rounded(MYOCARDIUM_DENSITY * phases[names[ed]]['MYO'])
    if len(names) < 2:
        reasons.append('one frame: volumes and mass, no ejection fraction')
        row.update(LVEDV_ml=_rounded(lv[0]), RVEDV_ml=_rounded(phases[names[0]].get('RV', math.nan)))
    else:
        row['es'] = names[es]
        for side in ('LV', 'RV'):
            if side in phases[names[ed]]:
                reasons += _ventricle(row, side, phases[names[ed]][side], phases[names[es]][side])
        if _clear_minima(lv) > 1:
            reasons.append('LV volume curve has more than one clear minimum')
        reasons += _rv_lv_ratio(phases[names[ed]], rv_lv_range)
    row['reasons'] = '; '.join(reasons)
    row['flag'] = int(bool(reasons) and not (len(names) < 2 and len(reasons) == 1))
    return {key: ('' if isinstance(value, float) and math.isnan(value) else value) for key, value in row.items()}


def _ventricle(row: dict, side: str, edv: float, esv: float) -> list[str]:
    """Fill one ventricle's volumes and EF into ``row``; the plausibility problems found."""
    ef = 100.0 * (edv - esv) / edv if edv > 0 else math.nan
    row.update(
        {
            f'{side}EDV_ml': _rounded(edv),
            f'{side}ESV_ml': _rounded(esv),
            f'{side}SV_ml': _rounded(edv - esv),
            f'{side}EF_pct': _rounded(ef),
        }
    )
    problems = []
    if esv >= edv:
        problems.append(f'{side} ESV at or above EDV')
    if not math.isnan(ef) and not EF_RANGE[0] <= ef <= EF_RANGE[1]:
        problems.append(f'{side} EF {ef:.0f}% outside {EF_RANGE[0]:g} to {EF_RANGE[1]:g}%')
    return problems


def _rv_lv_ratio(ed: Mapping[str, float], rv_lv_range: tuple[float, float] | None) -> list[str]:
    """The problem of an RV/LV EDV ratio outside the training set's range, if it is."""
    if rv_lv_range is None or 'RV' not in ed or ed['LV'] <= 0:
        return []
    ratio, (low, high) = ed['RV'] / ed['LV'], rv_lv_range
    return (
        []
        if low <= ratio <= high
        else [f"RV/LV EDV ratio {ratio:.2f} outside the training set's {low:.2f} to {high:.2f}"]
    )


def training_rv_lv_range(
    training_cases: Mapping, paint_values: Sequence[int], structures: Structures
) -> tuple[float, float] | None:
    """The lowest and highest RV/LV EDV ratio over the training patients, each at its ED (its largest LV cavity).

    Read from a checkpoint's training summary (:func:`heartseg.quality.qc.summarise_training_cases`), whose
    volumes are listed per structure in the order of ``paint_values``; None without an RV, or for a checkpoint
    whose summary has no case ids.

    Example:
        >>> summary = {'case_ids': ['p1_frame01', 'p1_frame09', 'p2_frame01'],
        ...            'structure_volumes_ml': [[150, 100], [90, 40], [120, 150]]}
        >>> training_rv_lv_range(summary, (1, 3), Structures(lv=3, rv=1))
        (0.8, 1.5)
    """
    ids, volumes = list(training_cases.get('case_ids') or []), training_cases.get('structure_volumes_ml') or []
    if structures.rv is None or not ids or len(ids) != len(volumes):
        return None
    lv, rv = list(paint_values).index(structures.lv), list(paint_values).index(structures.rv)
    ratios = []
    for case_ids in patient_groups(ids).values():
        ed = max((volumes[ids.index(case_id)] for case_id in case_ids), key=lambda row: row[lv])
        if ed[lv] > 0:
            ratios.append(ed[rv] / ed[lv])
    return (round(min(ratios), 4), round(max(ratios), 4)) if ratios else None


def _clear_minima(curve: Sequence[float]) -> int:
    """The minima of a cyclic volume curve whose prominence (the lower of the highest points on either side before
    the curve falls below the minimum again) is at least :data:`MINIMUM_DEPTH` of the curve's range.

    Example:
        >>> _clear_minima([150, 120, 80, 60, 90, 130]), _clear_minima([150, 70, 140, 150, 65, 145])
        (1, 2)
    """
    values = np.asarray(curve, dtype=float)
    size = len(values)
    if size < 3 or np.ptp(values) == 0:
        return 1
    clear = 0
    for i in range(size):
        if not values[i] < values[i - 1] or values[i] > values[(i + 1) % size]:
            continue
        rims = []
        for step in (-1, 1):
            highest, k = values[i], i
            for _ in range(size - 1):
                k = (k + step) % size
                if values[k] < values[i]:
                    break
                highest = max(highest, values[k])
            rims.append(highest)
        clear += int(min(rims) - values[i] >= MINIMUM_DEPTH * np.ptp(values))
    return int(clear)


def agreement(predicted: Sequence[dict], reference: Sequence[dict]) -> list[dict]:
    """For each index: the patients both rows give it for (n), Pearson's r, the bias (mean difference,
    predicted minus reference), the SD of the differences and the 95 % limits of agreement (bias ± 1.96 SD)."""
    by_patient = {row['patient']: row for row in reference}
    rows = []
    for index in INDICES:
        pairs = [
            (float(row[index]), float(by_patient[row['patient']][index]))
            for row in predicted
            if row['patient'] in by_patient and row[index] != '' and by_patient[row['patient']][index] != ''
        ]
        rows.append(_agreement_row(index, np.array(pairs, dtype=float).reshape(-1, 2)))
    return rows


def _agreement_row(index: str, pairs: np.ndarray) -> dict:
    n = len(pairs)
    difference = pairs[:, 0] - pairs[:, 1]
    bias = float(difference.mean()) if n else math.nan
    sd = float(difference.std(ddof=1)) if n > 1 else math.nan
    r = float(np.corrcoef(pairs.T)[0, 1]) if n > 2 and pairs.std(axis=0).min() > 0 else math.nan
    return {
        'index': index,
        'n': n,
        'r': _rounded(r, 4),
        'bias': _rounded(bias),
        'sd': _rounded(sd),
        'loa_low': _rounded(bias - 1.96 * sd),
        'loa_high': _rounded(bias + 1.96 * sd),
    }


def _rounded(value: float, digits: int = 2) -> float:
    return round(float(value), digits) if not math.isnan(value) else math.nan


def patient_phases(label_maps: Mapping[str, Path], structures: Structures) -> dict[str, dict[str, dict[str, float]]]:
    """Each patient's phases and their volumes from each case's label-map file (``{case_id: path}``): a patient's
    cases are its phases (:func:`heartseg.data.splits.patient_of` groups ACDC's ``patient001_frame01`` and
    ``_frame12``, and a cine input's ``<case>_phase00``, ``_phase01``, ...)."""
    patients = {}
    for patient, case_ids in patient_groups(list(label_maps)).items():
        patients[patient] = {}
        for case_id in case_ids:
            image = nib.load(label_maps[case_id])
            patients[patient][case_id] = phase_volumes(np.asarray(image.dataobj), image.affine, structures)
    return patients


def write_function_report(
    output: Path,
    masks: Mapping[str, Path],
    references: Mapping[str, Path] | None,
    structures: Structures,
    ed_first: bool = False,
    rv_lv_range: tuple[float, float] | None = None,
) -> tuple[list[str], dict[str, dict]]:
    """``function.csv`` from the masks, with a volume curve for every patient of more than two phases; with
    references, ``function_reference.csv``, ``function_agreement.csv`` and ``function_bland_altman.png``.
    The lines to print, and the review page's columns by case: its patient's indices."""
    phases = patient_phases(masks, structures)
    rows = [function_row(patient, volumes, ed_first, rv_lv_range) for patient, volumes in phases.items()]
    write_rows_csv(output / 'function.csv', rows)
    for row in rows:
        if len(phases[row['patient']]) > 2:
            curve = output / FUNCTION_CURVES / f'{row["patient"]}.png'
            curve.parent.mkdir(exist_ok=True)
            write_volume_curve(curve, row['patient'], phases[row['patient']], row['ed'], row['es'])
    flagged = sum(row['flag'] for row in rows)
    lines = [f'Cardiac function: {len(rows)} patient(s) in {output / "function.csv"}, {flagged} flagged']
    if references is not None:
        reference_phases = patient_phases(references, structures)
        reference_rows = [
            function_row(patient, volumes, ed_first, rv_lv_range) for patient, volumes in reference_phases.items()
        ]
        write_rows_csv(output / 'function_reference.csv', reference_rows)
        write_rows_csv(output / 'function_agreement.csv', agreement(rows, reference_rows))
        write_bland_altman(output / 'function_bland_altman.png', rows, reference_rows)
        lines.append(f'  against the references: {output / "function_agreement.csv"}, function_bland_altman.png')
    page = {
        case_id: {**{key: row[key] for key in PAGE_INDICES}, 'function_reasons': row['reasons']}
        for row in rows
        for case_id in phases[row['patient']]
    }
    return lines, page
