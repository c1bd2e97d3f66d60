"""`fp32`: the model as trained, exported unchanged. The baseline every other variant is compared with.

With `fine_tune: true` (a model spec's `variants: {fp32: {fine_tune: true, train_steps: ...}}`) the baseline is the
factory's model fine-tuned end to end on the train split (cross-entropy on the metric output), as a deployed model
would be: builder.pipeline.teacher trains it once, caches it in the artifacts keyed by its recipe, and every variant loads it
as its starting point and teacher. The factory's model as it was is kept as the `frozen` baseline in the record.
"""

from dataclasses import dataclass

from ..train import TrainingOverrides

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = "option"  # only with fine_tune (the cached teacher)
SIZE_ONLY = False


@dataclass(frozen=True)
class Config(TrainingOverrides):  # the fine-tune's budget, when `fine_tune` is on
    fine_tune: bool = False


def apply(model, context, config: Config):
    return model
