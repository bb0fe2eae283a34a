"""Fit quality control's rule on degraded predictions, and score the rule in heartseg/qc.py on cases that chose nothing.

Reads prediction folders written by ``predict.py --labels`` (``qc.csv`` with
the true Dice beside the estimate, per structure when there are several).
Cases are grouped by source scan (the name before ``__``, as
``benchmarks/degraded_set.py`` writes it) and scans by patient
(:func:`heartseg.data.splits.patient_of`). Without ``--report-on``, sorted
patients alternate: the even ones fit and the odd ones are reported, so no
damaged copy of a fitting scan, and no other frame of a fitting patient, is
ever scored; with it, the first folder fits
and the other (other patients, another model) is reported. The fit prints each
candidate feature set's coefficients and the Spearman correlation it gives the
fitting structures, and where their measures lie, for ``heartseg/qc.py``; the
report always scores the rule that file holds now.

Each structure of each case is one row of the fit. Reported, on the held-out
cases: Spearman correlation of predicted and true Dice over the structures,
AUROC for telling structures with true Dice below 0.80 from the rest, the
share of failing cases (a structure below 0.80) flagged and of clean cases
flagged, and the area under the risk-coverage curve of the cases (risk:
1 - mean Dice) against random order and the oracle.

Example:
    python -m benchmarks.qc_fit --predictions degraded_tta/ --no-tta-predictions degraded_no_tta/
    python -m benchmarks.qc_fit --predictions fitting/degraded --report-on test/degraded
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from heartseg.cli import Parser, user_path
from heartseg.data.splits import patient_of
from heartseg.errors import UserError, run_cli
from heartseg.quality.qc import FEATURES, assess, features

FAILURE_BELOW = 0.80
MEASURE_KEYS = (
    'tta_agreement',
    'model_agreement',
    'confidence',
    'volume_ml',
    'volume_ratio',
    'components',
    'removed_fraction',
    'edge_contact_mm2',
    'edge_limit_mm2',
    'intensity_distance',
)


def read_cases(folder: Path) -> list[dict]:
    """Each case's source scan, damage, and per structure its measures and true Dice,
    from a prediction folder's qc.csv."""
    path = folder / 'qc.csv'
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except OSError as error:
        raise UserError(path, f'cannot read ({error.strerror})') from None
    if not rows or 'true_dice' not in rows[0]:
        raise UserError(path, 'has no true_dice column; predict with --labels')
    names = [column.removesuffix(' true_dice') for column in rows[0] if column.endswith(' true_dice')]
    prefixes = {name: f'{name} ' for name in names} or {'': ''}
    cases = []
    for row in rows:
        if row['predicted_dice'] == '':
            continue  # a failed case has no mask to judge
        structures = {}
        for name, prefix in prefixes.items():
            measures = {
                key: float(row[prefix + key]) if row.get(prefix + key, '') != '' else math.nan for key in MEASURE_KEYS
            }
            measures['edge'] = row[prefix + 'edge']
            structures[name] = {'true_dice': float(row[prefix + 'true_dice']), 'measures': measures}
        source, _, damage = row['case'].partition('__')
        cases.append({'case': row['case'], 'source': source, 'damage': damage or 'clean', 'structures': structures})
    return cases


def structure_rows(cases: list[dict]) -> list[dict]:
    return [structure for case in cases for structure in case['structures'].values()]


def split(cases: list[dict]) -> tuple[list[dict], list[dict]]:
    """Alternate patients (not scans: ACDC's two frames of a patient stay on one side) between fitting and held out."""
    patients = sorted({patient_of(case['source']) for case in cases})
    fitting = set(patients[0::2])
    return (
        [c for c in cases if patient_of(c['source']) in fitting],
        [c for c in cases if patient_of(c['source']) not in fitting],
    )


def fit_rule(cases: list[dict], names: tuple[str, ...]) -> dict:
    """Least-squares coefficients of true Dice on the named features,
    and the Spearman correlation their fit gives the structures."""
    rows = structure_rows(cases)
    design = np.array([[1.0] + [features(r['measures'])[name] for name in names] for r in rows])
    target = np.array([r['true_dice'] for r in rows])
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    return {
        'rule': dict(zip(['intercept', *names], (round(float(v), 4) for v in coefficients))),
        'spearman': round(float(stats.spearmanr(design @ coefficients, target).statistic), 4),
    }


def candidate_rules(cases: list[dict], with_agreement: bool) -> list[dict]:
    """The fits of growing feature sets, first feature the strongest signal available;
    qc.py keeps the best-ranking one."""
    first = ('disagreement',) if with_agreement else ('unconfidence',)
    rest = [name for name in FEATURES if name not in first and (with_agreement or name != 'disagreement')]
    return [fit_rule(cases, first + tuple(rest[:k])) for k in range(len(rest) + 1)]


def aurc(confidence: np.ndarray, risk: np.ndarray) -> float:
    """Area under the risk-coverage curve: the mean risk of the most trusted k cases, averaged over k."""
    order = np.argsort(-confidence, kind='stable')
    return float(np.mean(np.cumsum(risk[order]) / np.arange(1, len(risk) + 1)))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a failure gets a lower score than a success (ties count half)."""
    failures, successes = scores[positive], scores[~positive]
    if not len(failures) or not len(successes):
        return math.nan
    return float(stats.mannwhitneyu(successes, failures).statistic / (len(failures) * len(successes)))


def evaluate(cases: list[dict]) -> dict:
    """The current rule's scores on ``cases``: per structure, and per case."""
    reports = [assess({name: s['measures'] for name, s in c['structures'].items()}) for c in cases]
    predicted = np.array([column['predicted_dice'] for r in reports for column in r.structures.values()])
    true = np.array([s['true_dice'] for s in structure_rows(cases)])
    case_true = np.array([np.mean([s['true_dice'] for s in c['structures'].values()]) for c in cases])
    case_failure = np.array([min(s['true_dice'] for s in c['structures'].values()) < FAILURE_BELOW for c in cases])
    flagged = np.array([r.flag for r in reports])
    clean = np.array([c['damage'] == 'clean' for c in cases])
    risk = 1 - case_true
    return {
        'cases': len(cases),
        'structures': len(true),
        'failing_cases': int(case_failure.sum()),
        'clean': int(clean.sum()),
        'spearman': float(stats.spearmanr(predicted, true).statistic),
        'auroc': auroc(predicted, true < FAILURE_BELOW),
        'failing_cases_flagged': f'{int(flagged[case_failure].sum())} of {int(case_failure.sum())}',
        'clean_flagged': f'{int(flagged[clean].sum())} of {int(clean.sum())}',
        'clean_flagged_cases': [c['case'] for c, f, k in zip(cases, flagged, clean) if f and k],
        'all_flagged': f'{int(flagged.sum())} of {len(cases)}',
        'aurc': aurc(np.array([r.predicted_dice for r in reports]), risk),
        'aurc_random': float(risk.mean()),
        'aurc_oracle': aurc(case_true, risk),
        'mean_absolute_error': float(np.abs(predicted - true).mean()),
    }


def by_damage(cases: list[dict]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for case in cases:
        groups[case['damage']].append(case)
    result = {}
    for damage, group in sorted(groups.items()):
        reports = [assess({name: s['measures'] for name, s in c['structures'].items()}) for c in group]
        result[damage] = {
            'cases': len(group),
            'true_dice': round(float(np.mean([s['true_dice'] for s in structure_rows(group)])), 4),
            'predicted_dice': round(float(np.mean([r.predicted_dice for r in reports])), 4),
            'flagged': sum(r.flag for r in reports),
        }
    return result


def normal_ranges(cases: list[dict]) -> dict[str, float]:
    """The fitting structures with true Dice of at least 0.85: where their measures lie."""
    good = [s['measures'] for s in structure_rows(cases) if s['true_dice'] >= 0.85]
    column = lambda key: np.array([m[key] for m in good if not math.isnan(m[key])])  # noqa: E731
    return {
        'tta_agreement_1st_percentile': float(np.percentile(column('tta_agreement'), 1))
        if column('tta_agreement').size
        else math.nan,
        'confidence_1st_percentile': float(np.percentile(column('confidence'), 1)),
        'volume_ratio_range': (float(column('volume_ratio').min()), float(column('volume_ratio').max()))
        if column('volume_ratio').size
        else None,
        'removed_fraction_99th_percentile': float(np.percentile(column('removed_fraction'), 99)),
        'intensity_distance_99th_percentile': float(np.percentile(column('intensity_distance'), 99)),
        'predicted_dice_of_clean_and_failing': {
            'clean_min': float(
                min(
                    assess({n: s['measures'] for n, s in c['structures'].items()}).predicted_dice
                    for c in cases
                    if c['damage'] == 'clean'
                )
            ),
        },
    }


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--predictions', type=user_path, required=True, help='prediction folder (predict.py --labels, with TTA)'
    )
    parser.add_argument(
        '--no-tta-predictions',
        type=user_path,
        help='the same cases predicted with --no-tta: fits and scores the rule without agreement',
    )
    parser.add_argument(
        '--report-on',
        type=user_path,
        help="fit on every case of --predictions and report on this folder's cases (other patients)",
    )
    parser.add_argument('--output', type=user_path, help='also write the results here as JSON')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_on is not None and args.no_tta_predictions is not None:
        raise UserError(
            '--report-on', 'takes the TTA predictions only; fit the --no-tta rule with the halves of one folder'
        )
    results = {}
    for name, folder, with_agreement in (('tta', args.predictions, True), ('no_tta', args.no_tta_predictions, False)):
        if folder is None:
            continue
        cases = read_cases(folder)
        fitting, held_out = (cases, read_cases(args.report_on)) if args.report_on is not None else split(cases)
        results[name] = {
            'candidate_rules': candidate_rules(fitting, with_agreement),
            'normal_ranges_of_fitting_cases': normal_ranges(fitting),
            'fitting_cases': evaluate(fitting),
            'held_out_cases': evaluate(held_out),
            'held_out_by_damage': by_damage(held_out),
        }
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.output is not None:
        args.output.write_text(text)
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
