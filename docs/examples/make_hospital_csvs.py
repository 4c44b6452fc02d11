"""Stand-in data for the worked example of docs/tasks.md: scikit-learn's breast-cancer data set
(569 tumours, 30 measurements) split into one CSV per hospital, unevenly.

    python docs/examples/make_hospital_csvs.py OUT_DIR   # writes OUT_DIR/alice.csv, bob.csv, carol.csv
"""

import csv
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer

HOSPITALS = {"alice": 0.45, "bob": 0.33, "carol": 0.22}  # share of the rows each one holds


def main(out: Path) -> None:
    data = load_breast_cancer()
    header = [n.replace(" ", "_") for n in data.feature_names] + ["malignant"]
    order = np.random.default_rng(0).permutation(len(data.target))
    cuts = np.cumsum([int(share * len(order)) for share in HOSPITALS.values()])[:-1]
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(HOSPITALS, np.split(order, cuts)):
        with open(out / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for i in rows:  # sklearn's target is 0 for malignant
                writer.writerow([f"{v:.6g}" for v in data.data[i]] + [1 - data.target[i]])
        print(f"{out / name}.csv: {len(rows)} tumours")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
