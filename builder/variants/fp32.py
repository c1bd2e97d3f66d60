"""`fp32`: the model as trained, exported unchanged. The baseline every other variant is compared with."""

from dataclasses import dataclass

STAGE = "torch"


@dataclass(frozen=True)
class Config:
    pass


def apply(model, context, config: Config):
    return model
