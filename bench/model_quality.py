"""Model quality on the real lead data set, for several held-out splits.

    python -m bench.model_quality [--seeds 10]

Reads the real lead data set with the CSV import's own reader and mapping,
and turns each row into the model's features as the product does for a
stored lead. For each split seed, it trains the default model (calibrated
gradient boosting) and the logistic-regression baseline on the same 70%,
and scores both on the same held-out 30%. The columns that sales fill
in after contact are left out, as in production.
"""

import argparse
import statistics
import time

from bench.lead_data import IMPORT_MAPPING, LEADS_CSV, LEAKING_COLUMNS
from nurture.csv_import import AcceptedRow, ImportMapping, read_rows
from nurture.enrichment import enrich
from nurture.lead_scoring import ACTIVITY_AS_OF, LeadActivity, feature_row, summarize
from nurture.leads import lead_columns
from nurture.learning import FeatureRow, TrainingOptions, train
from nurture.models import Lead, utcnow

MAPPING = ImportMapping.model_validate(IMPORT_MAPPING)


def training_set() -> tuple[list[FeatureRow], list[int]]:
    now = utcnow()
    rows: list[FeatureRow] = []
    labels: list[int] = []
    with LEADS_CSV.open("rb") as stream:
        for item in read_rows(stream, MAPPING):
            if not isinstance(item, AcceptedRow):
                raise SystemExit(f"line {item.line} rejected: {item.errors}")
            data = item.lead
            lead = Lead(
                **lead_columns(data.contact, data.company, data.source),
                external_id=data.external_id,
                custom_fields=dict(data.custom_fields),
                activity={**data.activity, ACTIVITY_AS_OF: now.isoformat()},
            )
            lead.enrichment = enrich(lead.model_dump()).model_dump()
            rows.append(feature_row(lead, summarize(lead, LeadActivity(), now)))
            assert data.outcome is not None
            labels.append(1 if data.outcome.outcome == "converted" else 0)
    return rows, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    rows, labels = training_set()

    print(f"{len(rows):,} leads, {sum(labels):,} converted; held out: 30%")
    print("seed  model AUC  accuracy   baseline AUC  accuracy   AUC ratio")

    ours, base = [], []
    began = time.perf_counter()
    for seed in range(args.seeds):
        options = TrainingOptions(random_seed=seed, exclude_features=LEAKING_COLUMNS)
        model = train(rows, labels, options).metrics
        baseline = train(
            rows,
            labels,
            options.model_copy(update={"classifier": "logistic_regression"}),
        ).metrics
        ours.append((model.roc_auc, model.accuracy))
        base.append((baseline.roc_auc, baseline.accuracy))
        marker = "  (default)" if seed == TrainingOptions().random_seed else ""
        print(
            f"{seed:>4}  {model.roc_auc:9.4f}  {model.accuracy:8.4f}   "
            f"{baseline.roc_auc:12.4f}  {baseline.accuracy:8.4f}   "
            f"{model.roc_auc / baseline.roc_auc:9.4f}{marker}"
        )

    for name, results in (("model", ours), ("baseline", base)):
        aucs = [auc for auc, _accuracy in results]
        accuracies = [accuracy for _auc, accuracy in results]
        print(
            f"{name:>8} mean: AUC {statistics.mean(aucs):.4f} "
            f"(min {min(aucs):.4f}), accuracy {statistics.mean(accuracies):.4f} "
            f"(min {min(accuracies):.4f})"
        )

    passing = sum(1 for auc, accuracy in ours if auc >= 0.91 and accuracy >= 0.84)
    print(f"splits meeting AUC >= 0.91 and accuracy >= 0.84: {passing} of {len(ours)}")
    print(f"took {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
