"""`fp32`: the model as trained, exported unchanged. The baseline every other variant is compared with."""

STAGE = "torch"


def apply(model, context):
    return model
