"""One worker of a shared Optuna rank search, for tests/lrf/search/test_distributed.py.

    python lrf_search_worker.py URL STUDY N_TRIALS SECONDS [SLOW_AT MARKER]

Joins study STUDY at URL and works until it holds N_TRIALS completed trials. The objective is synthetic
(a toy model; the error grows when its middle layer is compressed) and takes SECONDS per call; with
SLOW_AT, the SLOW_AT-th call writes MARKER and then hangs, so that the test can kill this worker in the
middle of a trial.
"""

import sys
import time
from pathlib import Path

import optuna
import torch
import torch.nn as nn

from npuq.lrf import compression_report
from npuq.lrf.search import Evaluator, SearchSpace, optuna_search


def main(argv):
    url, study, n_trials, seconds = argv[1], argv[2], int(argv[3]), float(argv[4])
    slow_at = int(argv[5]) if len(argv) > 5 else 0
    marker = Path(argv[6]) if len(argv) > 6 else None
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    calls = 0

    def evaluate(candidate_model):
        nonlocal calls
        calls += 1
        if calls == slow_at:
            marker.write_text("started")
            time.sleep(600)
        time.sleep(seconds)
        ranks = {row.path: row.rank for row in compression_report(candidate_model).layers}
        return 0.1 + (0.2 if ranks["2"] is not None else 0.0) + sum(0.01 for r in ranks.values() if r is not None)

    space = SearchSpace(model, fractions=(0.1, 0.3, 0.5))
    result = optuna_search(
        Evaluator(space, evaluate),
        target=2.0,
        n_trials=n_trials,
        storage=url,
        study_name=study,
        population_size=4,
        heartbeat_interval=1,
        grace_period=3,
        poll_interval=0.5,
        progress=False,
    )
    print(f"study {study}: {len(result.history)} completed trials, {result.evaluations} evaluated here")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
