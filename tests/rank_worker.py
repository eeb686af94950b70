"""Run by tests/test_launch.py as one of two gloo ranks that the test starts itself (RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT in the environment, no launcher): counts data decodes in
a file, makes rank 1 alone misbehave as the scenario says, then runs the distill command line.

    python rank_worker.py SCENARIO COUNTER distill-args...

Scenarios: `plain`; `nan` (rank 1's loss becomes NaN from its third step); `error` (rank 1 cannot
see the data folder).
"""

import os
import sys

import distill.data.cache as cache
from distill.errors import UserError

scenario, counter, *argv = sys.argv[1:]
rank = int(os.environ["RANK"])
decode = cache.decode


def counted(*args, **kwargs):
    with open(counter, "a") as f:
        f.write(f"{rank}\n")
    return decode(*args, **kwargs)


cache.decode = counted

if scenario == "nan" and rank == 1:
    from distill import losses

    step_of = losses.CrossEntropy.forward_train
    calls = [0]

    def nan_from_the_third_step(self, *args, **kwargs):
        calls[0] += 1
        logits, loss = step_of(self, *args, **kwargs)
        return logits, loss * float("nan") if calls[0] >= 3 else loss

    losses.CrossEntropy.forward_train = nan_from_the_third_step

if scenario == "error" and rank == 1:
    import distill.data.sources as sources

    def unseen(settings):
        raise UserError("rank 1 cannot see the data folder")

    sources.resolve_source = unseen

sys.argv = ["distill", *argv]
from distill.cli import main  # noqa: E402

main()
