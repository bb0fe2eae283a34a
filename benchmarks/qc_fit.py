"""Fit quality control's rule on half the cases of a degraded test set, and score the rule in heartseg/qc.py on the other half.

Reads prediction folders written by ``predict.py --labels`` (``qc.csv`` with
the true Dice beside the estimate). Cases are split by source scan (the name
before ``__``, as ``benchmarks/degraded_set.py`` writes it): sorted, the even
ones fit and the odd ones are reported, so no damaged copy of a fitting scan is
ever scored. The fit prints each candidate feature set's coefficients and the
Spearman correlation it gives the fitting half, and where its measures lie, for
``heartseg/qc.py``; the report always scores the rule that file holds now.

Reported, on the held-out half: Spearman correlation of predicted and true
Dice, AUROC for telling masks with true Dice below 0.80 from the rest, the
share of those failures flagged and of clean cases flagged, and the area under
the risk-coverage curve (risk: 1 - Dice) against random order and the oracle.

Example:
    python -m benchmarks.qc_fit --predictions degraded_tta/ --no-tta-predictions degraded_no_tta/
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

from heartseg.cli import Parser
from heartseg.errors import UserError, run_cli
from heartseg.qc import FEATURES, assess, features

FAILURE_BELOW = 0.80
MEASURE_KEYS = ('tta_agreement', 'model_agreement', 'confidence', 'volume_ml', 'volume_ratio', 'components',
                'removed_fraction', 'edge_contact_mm2', 'intensity_distance')


def read_cases(folder: Path) -> list[dict]:
    """Each case's measures, true Dice, source scan and damage, from a prediction folder's qc.csv."""
    path = folder / 'qc.csv'
    try:
        rows = list(csv.DictReader(path.read_text().splitlines()))
    except OSError as error:
        raise UserError(path, f'cannot read ({error.strerror})') from None
    if not rows or 'true_dice' not in rows[0]:
        raise UserError(path, 'has no true_dice column; predict with --labels')
    cases = []
    for row in rows:
        if row['predicted_dice'] == '':
            continue  # a failed case has no mask to judge
        measures = {key: float(row[key]) if row[key] != '' else math.nan for key in MEASURE_KEYS}
        measures['edge'] = row['edge']
        source, _, damage = row['case'].partition('__')
        cases.append({'case': row['case'], 'source': source, 'damage': damage or 'clean',
                      'true_dice': float(row['true_dice']), 'measures': measures})
    return cases


def split(cases: list[dict]) -> tuple[list[dict], list[dict]]:
    sources = sorted({case['source'] for case in cases})
    fitting = set(sources[0::2])
    return [c for c in cases if c['source'] in fitting], [c for c in cases if c['source'] not in fitting]


def fit_rule(cases: list[dict], names: tuple[str, ...]) -> dict:
    """Least-squares coefficients of true Dice on the named features, and the Spearman correlation their fit gives ``cases``."""
    design = np.array([[1.0] + [features(c['measures'])[name] for name in names] for c in cases])
    target = np.array([c['true_dice'] for c in cases])
    coefficients, *_ = np.linalg.lstsq(design, target, rcond=None)
    return {'rule': dict(zip(['intercept', *names], (round(float(v), 4) for v in coefficients))),
            'spearman': round(float(stats.spearmanr(design @ coefficients, target).statistic), 4)}


def candidate_rules(cases: list[dict], with_agreement: bool) -> list[dict]:
    """The fits of growing feature sets, first feature the strongest signal available; qc.py keeps the best-ranking one."""
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
    """The current rule's scores on ``cases``."""
    reports = [assess(c['measures']) for c in cases]
    predicted = np.array([r.predicted_dice for r in reports])
    flagged = np.array([r.flag for r in reports])
    true = np.array([c['true_dice'] for c in cases])
    failure = true < FAILURE_BELOW
    clean = np.array([c['damage'] == 'clean' for c in cases])
    risk = 1 - true
    return {
        'cases': len(cases), 'failures': int(failure.sum()), 'clean': int(clean.sum()),
        'spearman': float(stats.spearmanr(predicted, true).statistic),
        'auroc': auroc(predicted, failure),
        'failures_flagged': f'{int(flagged[failure].sum())} of {int(failure.sum())}',
        'clean_flagged': f'{int(flagged[clean].sum())} of {int(clean.sum())}',
        'all_flagged': f'{int(flagged.sum())} of {len(cases)}',
        'aurc': aurc(predicted, risk), 'aurc_random': float(risk.mean()), 'aurc_oracle': aurc(true, risk),
        'mean_absolute_error': float(np.abs(predicted - true).mean()),
    }


def by_damage(cases: list[dict]) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for case in cases:
        groups[case['damage']].append(case)
    return {damage: {'cases': len(group), 'true_dice': round(float(np.mean([c['true_dice'] for c in group])), 4),
                     'predicted_dice': round(float(np.mean([assess(c['measures']).predicted_dice for c in group])), 4),
                     'flagged': sum(assess(c['measures']).flag for c in group)}
            for damage, group in sorted(groups.items())}


def normal_ranges(cases: list[dict]) -> dict[str, float]:
    """The fitting half's clean and mildly damaged cases (true Dice of at least 0.85): where their measures lie."""
    good = [c['measures'] for c in cases if c['true_dice'] >= 0.85]
    column = lambda key: np.array([m[key] for m in good if not math.isnan(m[key])])  # noqa: E731
    return {
        'tta_agreement_1st_percentile': float(np.percentile(column('tta_agreement'), 1)) if column('tta_agreement').size else math.nan,
        'confidence_1st_percentile': float(np.percentile(column('confidence'), 1)),
        'volume_ratio_range': (float(column('volume_ratio').min()), float(column('volume_ratio').max())),
        'removed_fraction_99th_percentile': float(np.percentile(column('removed_fraction'), 99)),
        'intensity_distance_99th_percentile': float(np.percentile(column('intensity_distance'), 99)),
    }


def build_parser() -> argparse.ArgumentParser:
    summary, _, rest = __doc__.partition('\n\n')
    parser = Parser(description=summary, epilog=rest, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--predictions', type=Path, required=True, help='prediction folder (predict.py --labels, with TTA)')
    parser.add_argument('--no-tta-predictions', type=Path, help='the same cases predicted with --no-tta: fits and scores the rule without agreement')
    parser.add_argument('--output', type=Path, help='also write the results here as JSON')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results = {}
    for name, folder, with_agreement in (('tta', args.predictions, True), ('no_tta', args.no_tta_predictions, False)):
        if folder is None:
            continue
        fitting, held_out = split(read_cases(folder))
        results[name] = {
            'candidate_rules': candidate_rules(fitting, with_agreement),
            'normal_ranges_of_fitting_half': normal_ranges(fitting),
            'fitting_half': evaluate(fitting),
            'held_out_half': evaluate(held_out),
            'held_out_by_damage': by_damage(held_out),
        }
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.output is not None:
        args.output.write_text(text)
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
