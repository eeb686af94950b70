"""`distill sweep`: an Optuna study whose trials are ordinary distill runs (SPEC 12).

- `space`: the TOML search space, checked before any trial;
- `settings`: `SweepSettings` (trials, objective, pruner, budget, workers, storage, ...);
- `job`: a sweep as one plain record and its identity;
- `study`: storages, the shared study, taking up trials whose worker died;
- `worker`: ask, train, report per epoch, tell (rank 0 only under torchrun);
- `trial`: one trial's folder, feasibility, training and objective values;
- `launch`: the command from start to end, local worker processes;
- `confirm`: retraining the best with other seeds, scoring the winner held out;
- `results`: the trials table, the best trial or Pareto front, plots.
"""
