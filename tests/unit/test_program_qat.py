"""QAT of a torch.export program (builder/pipeline/variants/qat.py: fake_quantize_graph): the graph's linear and conv read
fake-quantized weights and inputs while it trains; restoring bakes the weights onto the int8 grid and gives back
the original graph."""

import torch

from builder.pipeline.sources.torchprogram import trainable_program
from builder.pipeline.variants.qat import fake_quantize_graph


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.fc = torch.nn.Linear(3 * 4 * 4, 2)

    def forward(self, image):
        return self.fc(torch.relu(self.conv(image)).flatten(1))


def program(tmp_path):
    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(Small().eval(), (torch.randn(2, 1, 4, 4),), dynamic_shapes={"image": {0: batch}})
    torch.export.save(exported, str(tmp_path / "small.pt2"))
    return trainable_program(tmp_path / "small.pt2")


def test_the_rewritten_graph_trains_on_the_grid_and_restores_to_the_original(tmp_path):
    model = program(tmp_path)
    graph = model.graph_module
    before = [(n.op, str(n.target)) for n in graph.graph.nodes]
    x = torch.randn(8, 1, 4, 4)
    with torch.no_grad():
        plain = model(image=x)
    restore = fake_quantize_graph(graph, 127, 0.9)
    assert sorted(restore.weights) == ["conv.weight", "fc.weight"]
    model.train()  # the wrapper's mode switch; torch refuses train() on the graph module itself
    quantized = model(image=x)
    quantized.sum().backward()  # straight-through: gradients reach the float weights
    assert graph.get_parameter("fc.weight").grad is not None
    assert not torch.equal(quantized.detach(), plain)
    restore()
    assert [(n.op, str(n.target)) for n in graph.graph.nodes] == before
    for name in restore.weights:
        weight = graph.get_parameter(name).detach()
        scale = weight.abs().amax(dim=tuple(range(1, weight.dim())), keepdim=True) / 127
        steps = weight / scale
        assert torch.allclose(steps, steps.round(), atol=1e-3)  # every weight on its channel's int8 grid


def test_a_graph_without_conv_or_linear_has_nothing_to_rewrite(tmp_path):
    class Scale(torch.nn.Module):
        def forward(self, image):
            return image * 2

    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(Scale(), (torch.randn(2, 3),), dynamic_shapes={"image": {0: batch}})
    torch.export.save(exported, str(tmp_path / "scale.pt2"))
    assert fake_quantize_graph(trainable_program(tmp_path / "scale.pt2").graph_module, 127, 0.9) is None
