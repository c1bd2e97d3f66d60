"""ALBERT's two savings as variants: `embed-factorized` really holds a rank-r embedding (V x r table, r x d
projection) chosen by the energy rule and refuses ranks that save nothing; `shared` really reuses the same layer
objects at the teacher's depth. Tiny models, no training."""

import pytest
import torch

from builder.core.errors import VariantError
from builder.pipeline.variants import embed_factorized as ef
from builder.pipeline.variants import shared, steps
from tests.fixtures.tiny.tiny_model import VOCAB, BagOfTokens


class TinyEncoder(torch.nn.Module):
    """Embedding -> 6 repeated blocks -> mean -> head, the shape of a BERT-like model."""

    def __init__(self, layers: int = 6, width: int = 8):
        super().__init__()
        self.embedding = torch.nn.Embedding(40, width)
        self.layer = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Tanh())
                                         for _ in range(layers))
        self.head = torch.nn.Linear(width, 2)

    def forward(self, tokens):
        x = self.embedding(tokens)
        for block in self.layer:
            x = x + block(x)
        return self.head(x.mean(1))


def test_registered_under_their_variant_names():
    assert [(s.name, s.stage) for s in steps("embed-factorized+int8")] == [("embed-factorized", "torch"),
                                                                          ("int8", "onnx")]
    assert [(s.name, s.stage) for s in steps("shared")] == [("shared", "torch")]
    # options are read from the spec's variants section under the variant's name
    assert steps("embed-factorized")[0].config({"embed-factorized": {"rank": 3}}).rank == 3
    assert steps("shared")[0].config({"shared": {"unique_layers": 3}}).unique_layers == 3


def test_factorized_embedding_has_the_chosen_rank_and_its_parameters():
    torch.manual_seed(0)
    model = BagOfTokens()  # embedding 50 x 8: break-even rank 50*8/58 = 6.9
    factored, facts = ef.factorize(model, ef.Config(rank=3))
    table, projection = factored.embedding
    assert tuple(table.weight.shape) == (VOCAB, 3) and tuple(projection.weight.shape) == (8, 3)
    assert projection.bias is None
    assert facts["embedding_params_after"] == VOCAB * 3 + 3 * 8 == sum(p.numel() for p in factored.embedding.parameters())
    assert facts["params_before"] - facts["params_after"] == VOCAB * 8 - (VOCAB * 3 + 3 * 8)
    assert model.embedding.weight.shape == (VOCAB, 8)  # the input model is not changed


def test_full_rank_factorization_reproduces_the_embedding():
    torch.manual_seed(0)
    model = BagOfTokens()
    u, s, vh = torch.linalg.svd(model.embedding.weight.data, full_matrices=False)
    exact = ef.factor_embedding(model.embedding, 8)
    tokens = torch.randint(0, VOCAB, (4, 6))
    assert torch.allclose(exact(tokens), model.embedding(tokens), atol=1e-5)
    truncated = ef.factor_embedding(model.embedding, 3)
    expected = (u[:, :3] * s[:3]) @ vh[:3]  # the best rank-3 approximation
    assert torch.allclose(truncated(torch.arange(VOCAB)), expected, atol=1e-5)


def test_energy_rule_picks_the_smallest_rank_reaching_the_energy():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22: cumulative 0.727, 0.909, 0.955, 1
    assert ef.choose_rank(s, ef.Config(energy=0.7)) == 1
    assert ef.choose_rank(s, ef.Config(energy=16 / 22)) == 1  # reached exactly
    assert ef.choose_rank(s, ef.Config(energy=0.8)) == 2
    assert ef.choose_rank(s, ef.Config(energy=0.95)) == 3
    assert ef.choose_rank(s, ef.Config(energy=1.0)) == 4
    assert ef.choose_rank(s, ef.Config(energy=0.8, rank=3)) == 3  # an explicit rank wins


def test_a_rank_that_saves_nothing_is_refused_with_the_numbers():
    model = BagOfTokens()
    with pytest.raises(VariantError, match="break-even rank is 6.9") as info:
        ef.factorize(model, ef.Config(rank=7))  # 50*7 + 7*8 = 406 >= 400
    assert "406" in str(info.value) and "400" in str(info.value) and "energy" in info.value.hint
    with pytest.raises(VariantError, match="saves no parameters"):
        ef.factorize(model, ef.Config(energy=1.0))  # full rank 8
    with pytest.raises(VariantError, match="rank must be >= 1"):
        ef.factorize(model, ef.Config(rank=0))


def test_the_largest_embedding_is_factorized_and_a_tied_one_refused():
    model = TinyEncoder()
    model.small = torch.nn.Embedding(3, 8)
    assert ef.largest_embedding(model)[2] == "embedding"
    model.head = torch.nn.Linear(8, 40, bias=False)
    model.head.weight = model.embedding.weight  # an LM head tied to the embedding
    with pytest.raises(VariantError, match="tied"):
        ef.largest_embedding(model)


def test_sharing_plan_groups_consecutive_positions():
    assert shared.sharing_plan(6, 2) == [0, 0, 0, 3, 3, 3]
    assert shared.sharing_plan(6, 3) == [0, 0, 2, 2, 4, 4]
    assert shared.sharing_plan(6, 4) == [0, 0, 2, 2, 4, 5]
    assert shared.sharing_plan(6, 1) == [0] * 6


def test_shared_student_keeps_depth_with_fewer_unique_parameters():
    torch.manual_seed(0)
    teacher = TinyEncoder()
    student, info = shared.shared_student(teacher, 2)
    assert len(student.layer) == len(teacher.layer) == 6
    assert all(student.layer[i] is student.layer[0] for i in (1, 2))
    assert all(student.layer[i] is student.layer[3] for i in (4, 5)) and student.layer[0] is not student.layer[3]
    per_layer = sum(p.numel() for p in teacher.layer[0].parameters())
    assert info["unique_params"] == sum(p.numel() for p in student.parameters()) == info["teacher_params"] - 4 * per_layer
    assert info["layer_plan"] == [0, 0, 0, 3, 3, 3] and info["total_layers"] == 6 and info["unique_layers"] == 2
    # initialised from the teacher's layers 0 and 3 (copies: the teacher is not changed)
    assert torch.equal(student.layer[0][0].weight, teacher.layer[0][0].weight)
    assert torch.equal(student.layer[5][0].weight, teacher.layer[3][0].weight)
    assert student.layer[0][0].weight is not teacher.layer[0][0].weight
    student(torch.randint(0, 40, (2, 5))).sum().backward()  # one gradient per shared tensor, from every position
    assert student.layer[1][0].weight.grad is student.layer[0][0].weight.grad


def test_shared_refuses_what_is_not_sharing():
    with pytest.raises(VariantError, match="between 1 and 5"):
        shared.shared_student(TinyEncoder(), 6)
    with pytest.raises(VariantError, match="no repeated blocks"):
        shared.shared_student(BagOfTokens(), 2)
