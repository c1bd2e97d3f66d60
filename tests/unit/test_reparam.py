"""The reparam variant's folding is exact: BatchNorm into a conv, and a MobileOne block's branches into one conv."""

import pytest
import torch

from builder.core.errors import VariantError
from builder.core.spec import parse_spec
from builder.pipeline.variants import reparam

IMAGE_SPEC = parse_spec({"name": "img", "factory": "a:b", "data": "a:b",
                         "inputs": [{"name": "image", "dtype": "float32", "shape": ["batch", 1, 28, 28]}],
                         "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}],
                         "metric": {"output": "logits"}}, where="test")
TEXT_SPEC = parse_spec({"name": "txt", "factory": "a:b", "data": "a:b",
                        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
                        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
                        "metric": {"output": "logits"}, "example_sizes": {"sequence": 8}}, where="test")


def randomise_batchnorm(model, generator) -> None:
    """Non-trivial running statistics, gamma and beta, as after training."""
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_(torch.randn(n, generator=generator))
                bn.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.1)
                bn.weight.copy_(torch.randn(n, generator=generator))
                bn.bias.copy_(torch.randn(n, generator=generator))


@pytest.mark.parametrize("bias", [False, True])
def test_batchnorm_folds_into_the_conv(bias):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, bias=bias)
    bn = torch.nn.BatchNorm2d(5)
    randomise_batchnorm(torch.nn.Sequential(bn), generator)
    bn.eval()
    weight, b = reparam.fold_bn(conv.weight, conv.bias, bn)
    x = torch.randn(4, 3, 9, 9, generator=generator)
    with torch.no_grad():
        want = bn(conv(x))
        got = torch.nn.functional.conv2d(x, weight, b, padding=1)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", [reparam.Config(), reparam.Config(widths=(8, 8, 12), depths=(2, 1, 3),
                                                                     strides=(1, 2, 2))])
def test_the_folded_student_computes_what_the_branched_one_does(config):
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    branched = reparam.student("image", 1, 10, config, [33.0], [78.0])
    randomise_batchnorm(branched, generator)
    branched.eval()
    folded = reparam.reparameterize(branched)
    images = torch.rand(16, 1, 28, 28, generator=generator) * 255
    with torch.no_grad():
        want, got = branched(image=images), folded(image=images)
    # float32 rounding of sums taken in another order; the same rule the build applies
    assert (want - got).abs().max() <= reparam.EQUIVALENCE_RTOL * max(1.0, want.abs().max())
    assert branched.training is False and reparam.blocks_of(branched)  # the original is left as it was


def test_folded_blocks_are_one_conv_with_bias_and_no_batchnorm():
    config = reparam.Config()
    branched = reparam.student("image", 1, 10, config, [33.0], [78.0])
    blocks = reparam.blocks_of(branched)
    assert len(blocks) == sum(config.depths)
    assert [b.branches for b in blocks] == [2, 2, 2, 3]  # identity only where channels and size are kept
    folded = reparam.reparameterize(branched)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert reparam.blocks_of(folded) == []
    convs = [m for m in folded.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == len(blocks)
    assert all(c.kernel_size == (3, 3) and c.bias is not None for c in convs)


def test_the_student_takes_the_spec_input_by_name():
    model = reparam.student("pixels", 3, 4, reparam.Config(widths=(4,), depths=(1,), strides=(1,)), [0, 0, 0],
                            [1, 1, 1]).eval()
    assert model(pixels=torch.zeros(2, 3, 8, 8)).shape == (2, 4)


def test_an_image_classifier_spec_is_accepted():
    assert reparam.image_classifier(IMAGE_SPEC) == ("image", 1, 10)


def test_a_model_without_an_image_input_is_rejected():
    with pytest.raises(VariantError, match="input `input_ids`.*not an image") as info:
        reparam.apply(torch.nn.Linear(2, 2), type("Context", (), {"spec": TEXT_SPEC})(), reparam.Config())
    assert "distilled" in info.value.hint


def test_bad_shapes_of_the_student_are_rejected():
    with pytest.raises(VariantError, match="one positive entry per stage"):
        reparam.Config(widths=(8, 16), depths=(1,), strides=(1, 2)).check()


def test_separable_mac_formulas_match_the_counted_macs():
    from builder.pipeline.measure import count_macs
    from builder.pipeline.variants import distilled

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1))

        def forward(self, image):
            return self.body(image).mean((2, 3))

    net = Net().eval()
    student, info = distilled.separable_student(net)
    example = {"image": torch.zeros(1, 1, 12, 12).numpy()}
    macs = distilled.separable_macs(net, student, info["separable_convs"], example)
    conv = macs["per_conv"]["body.2"]
    assert conv["D_F"] == [6, 6] and conv["standard"] == 9 * 8 * 16 * 36 and conv["separable"] == 9 * 8 * 36 + 8 * 16 * 36
    assert macs["standard_student"] == count_macs(net, example)
    assert macs["standard_student"] - macs["separable_student"] == conv["standard"] - conv["separable"]


def test_the_stem_takes_the_teachers_largest_filters_where_the_shapes_allow():
    torch.manual_seed(2)
    teacher = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU())
    branched = reparam.student("image", 1, 10, reparam.Config(), [33.0], [78.0])
    done = reparam.stem_from_teacher(branched, teacher)
    norms = teacher[0].weight.flatten(1).norm(dim=1)
    assert done["from"] == "0" and len(done["filters"]) == 16
    assert min(norms[done["filters"]]) >= max(norms[[i for i in range(32) if i not in done["filters"]]])
    assert torch.equal(reparam.blocks_of(branched)[0].conv3.weight, teacher[0].weight[done["filters"]])


@pytest.mark.parametrize("teacher, why", [
    (torch.nn.Conv2d(3, 32, 3), "3->32"),  # other input channels
    (torch.nn.Conv2d(1, 32, 5), "(5, 5)"),  # another kernel
    (torch.nn.Conv2d(1, 8, 3), "1->8"),  # fewer filters than the stem has
    (torch.nn.Linear(4, 4), "no Conv2d")])
def test_a_teacher_whose_first_conv_does_not_fit_leaves_the_stem_as_it_was(teacher, why):
    branched = reparam.student("image", 1, 10, reparam.Config(), [33.0], [78.0])
    before = reparam.blocks_of(branched)[0].conv3.weight.clone()
    done = reparam.stem_from_teacher(branched, teacher)
    assert why in done["skipped"] and torch.equal(reparam.blocks_of(branched)[0].conv3.weight, before)
