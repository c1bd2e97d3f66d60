"""`tinybert`: a student narrower as well as shallower than a BERT-style teacher, trained TinyBERT's way.

The student: the teacher's encoder (a transformers BertModel, e.g. MiniLM) rebuilt with `width` hidden units,
`ffn` feed-forward units and `layers` layers (heads of the teacher's own size, so width / head size of them),
initialised by slicing the teacher: student layer m starts as teacher layer g(m) = (m + 1) * N / M - 1 (TinyBERT's
uniform map), keeping the hidden units the teacher uses most (mean |activation| over a sample of training inputs),
per layer the heads whose output-projection columns weigh most and the FFN units with the largest
|W_in row| * |W_out column|. The narrow encoder's last hidden state goes through a learned W_h (width -> the
teacher's width) that stays in the served model, so everything after the encoder (pooling, head) and every output
keeps the teacher's shape.

The loss (TinyBERT's four terms, each weighted by an option):
- L_embd: MSE(E_s W_e, E_t) on the embedding layer's output, over real tokens;
- L_hidn: MSE(H_s^m W_h^m, H_t^g(m)) per student layer; the last W_h is the served projection;
- L_attn: per student head, KL(teacher head's attention || student head's) over real tokens. TinyBERT takes the MSE
  of the pre-softmax scores; transformers returns only the probabilities, so this is MiniLM's distribution loss;
- L_pred: distilled.DistillationOptions' response loss: alpha * T^2 * KL(soft logits) + (1 - alpha) * CE(labels)
  on labelled rows, plus feature_weight * the squared error of the feature output (the sentence embedding).

Teaching on new data (`extra`): the training rows are the train split, plus the unlabelled inputs `unlabelled`
returns (a `module:function(workdir) -> dict of input arrays`, e.g. Rotten Tomatoes' `plot` snippets), deduplicated
against the validation and evaluation splits and against the train split; plus `token_dropout`: every batch,
half of the rows lose that share of their inner tokens. The teacher runs on each batch as the student gets it, so
both see the same (augmented) input; unlabelled rows have no hard-label term. The schedule length ("patient
teaching") is `train_steps` / `train_epochs`, counted over that extended set.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import numpy as np

from ...core.data import Split
from ...core.errors import VariantError
from ...core.spec import resolve_callable
from ..measure import torch_accuracy
from ..train import example_key, run_training, train_config
from .distilled import DistillationOptions

STAGE = "torch"
PRECISION = "fp32"  # of the weights this step leaves
TRAINS = True
SIZE_ONLY = False
UNLABELLED = -100  # the label of a row with none: F.cross_entropy's ignore_index
AUGMENTED_SHARE = 0.5  # rows of a batch that token dropout changes: the rest keep the text as written


@dataclass(frozen=True)
class Config(DistillationOptions):
    width: int = 256  # hidden units of the student (the teacher's: e.g. 384 for MiniLM)
    ffn: int = 1024  # feed-forward units per layer (MiniLM: 1536)
    layers: int = 3  # encoder layers (MiniLM: 6)
    init: str = "slice"  # "slice": from the teacher's weights (see the module docstring); "random": fresh weights
    hidden_weight: float = 1.0  # L_hidn
    embedding_weight: float = 1.0  # L_embd
    attention_weight: float = 1.0  # L_attn
    unlabelled: str | None = None  # `module:function(workdir) -> dict of input arrays`: extra inputs to teach on
    token_dropout: float = 0.0  # share of inner tokens dropped from half the rows of each batch (0: off)

    def check(self) -> None:
        super().check()
        if min(self.width, self.ffn, self.layers) < 1:
            raise VariantError(f"tinybert: width, ffn and layers must be positive, got {self.width}, {self.ffn}, "
                               f"{self.layers}")
        if self.init not in ("slice", "random"):
            raise VariantError(f"tinybert: init must be `slice` or `random`, got {self.init!r}")
        if min(self.hidden_weight, self.embedding_weight, self.attention_weight) < 0:
            raise VariantError("tinybert: hidden_weight, embedding_weight and attention_weight must be >= 0")
        if not 0 <= self.token_dropout < 1:
            raise VariantError(f"tinybert: token_dropout must be in [0, 1), got {self.token_dropout}")


def find_encoder(model):
    """(parent, attribute, encoder) of the model's transformers BERT-style encoder (embeddings + encoder.layer)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if hasattr(child, "config") and hasattr(child, "embeddings") and hasattr(getattr(child, "encoder", None), "layer"):
                return parent, name, child
    raise VariantError("tinybert: the model has no BERT-style encoder (a transformers BertModel: embeddings + "
                       "encoder.layer) to narrow", hint="for other models use `distilled`")


def narrow_encoder_class():
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    class _NarrowEncoder(torch.nn.Module):
        """A narrow BertModel whose last hidden state is projected back to the teacher's width (`up`, the last
        W_h). In training mode it also keeps the last call's hidden states and attention maps in `recorded` (the
        TinyBERT losses read them) and holds the training-only projections W_e and W_h^m (`projections`); the
        served model (eval mode, projections dropped) computes only the encoder and `up`."""

        def __init__(self, student, teacher_width: int):
            super().__init__()
            self.student = student
            width = student.config.hidden_size
            self.up = torch.nn.Linear(width, teacher_width)
            # W_e, then W_h of every layer but the last (whose W_h is `up`)
            self.projections = torch.nn.ModuleList(
                torch.nn.Linear(width, teacher_width) for _ in range(student.config.num_hidden_layers))
            self.recorded = None

        def forward(self, input_ids, attention_mask=None, **kwargs):
            training = self.training and self.projections is not None
            out = self.student(input_ids=input_ids, attention_mask=attention_mask,
                               output_hidden_states=training, output_attentions=training)
            hidden = self.up(out.last_hidden_state)
            if training:
                self.recorded = (out.hidden_states, out.attentions)
            return BaseModelOutput(last_hidden_state=hidden)

    return _NarrowEncoder


def teacher_layers(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform map g: student layer m (0-based) learns from teacher layer (m + 1) * N / M - 1."""
    return [(m + 1) * teacher_layers // student_layers - 1 for m in range(student_layers)]


@contextlib.contextmanager
def recording(encoder):
    """While active, every call of the (teacher's) `encoder` also returns its hidden states and attention maps;
    the last call's (hidden_states, attentions) are in the yielded dict under "states"."""
    seen = {}

    def ask(module, args, kwargs):
        return args, {**kwargs, "output_hidden_states": True, "output_attentions": True}

    def keep(module, args, kwargs, output):
        seen["states"] = (output.hidden_states, output.attentions)

    hooks = [encoder.register_forward_pre_hook(ask, with_kwargs=True),
             encoder.register_forward_hook(keep, with_kwargs=True)]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def hidden_importance(encoder, split: Split, sequence_mask: str | None, examples: int = 64) -> np.ndarray:
    """Mean |activation| of each hidden unit over the embedding output and every layer's output, on `examples`
    training inputs (real tokens only)."""
    import torch

    batch = {k: torch.from_numpy(v) for k, v in split.spread(examples).inputs.items()}
    names = ("input_ids", "attention_mask")
    with torch.no_grad():
        out = encoder(**{k: batch[k] for k in names if k in batch}, output_hidden_states=True)
    mask = batch[sequence_mask].unsqueeze(-1).float() if sequence_mask else torch.ones_like(out.hidden_states[0][..., :1])
    total = sum((h.abs() * mask).sum(dim=(0, 1)) for h in out.hidden_states)
    return (total / mask.sum()).numpy()


def build_student(teacher_model, config: Config, split: Split, sequence_mask: str | None):
    """(student model, info): a deep copy of `teacher_model` whose BERT encoder is a NarrowEncoder of `config`'s
    shape, sliced from the teacher's (init "slice") or fresh (init "random"). Raises VariantError when the shape
    is not narrower, or the width is not a whole number of the teacher's heads."""
    import torch
    from transformers import BertModel

    model = copy.deepcopy(teacher_model)
    parent, name, encoder = find_encoder(model)
    tc = encoder.config
    head = tc.hidden_size // tc.num_attention_heads
    if not (config.width < tc.hidden_size or config.ffn < tc.intermediate_size or config.layers < tc.num_hidden_layers):
        raise VariantError(f"tinybert: the student ({config.width} wide, ffn {config.ffn}, {config.layers} layers) "
                           f"is not smaller than the teacher ({tc.hidden_size}, {tc.intermediate_size}, "
                           f"{tc.num_hidden_layers})")
    if (config.width > tc.hidden_size or config.ffn > tc.intermediate_size or config.layers > tc.num_hidden_layers
            or config.width % head):
        raise VariantError(f"tinybert: need width <= {tc.hidden_size} and a multiple of the head size {head}, "
                           f"ffn <= {tc.intermediate_size}, layers <= {tc.num_hidden_layers}; got width "
                           f"{config.width}, ffn {config.ffn}, layers {config.layers}")
    sc = copy.deepcopy(tc)
    sc.hidden_size, sc.intermediate_size, sc.num_hidden_layers = config.width, config.ffn, config.layers
    sc.num_attention_heads = config.width // head
    sc.output_hidden_states = sc.output_attentions = False
    torch.manual_seed(0)
    student = BertModel(sc, add_pooling_layer=False)
    student.config._attn_implementation = tc._attn_implementation  # eager: attention maps for L_attn
    mapping = teacher_layers(config.layers, tc.num_hidden_layers)
    narrow = narrow_encoder_class()(student, tc.hidden_size)
    info = {"student": "narrow", "teacher_shape": [tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers],
            "student_shape": [config.width, config.ffn, config.layers], "heads": sc.num_attention_heads,
            "teacher_layer_of_student_layer": mapping, "init": config.init}
    kept_heads = []
    if config.init == "slice":
        units = np.sort(np.argsort(-hidden_importance(encoder, split, sequence_mask))[:config.width])
        kept_heads = slice_into(student, encoder, units, mapping, head)
        with torch.no_grad():  # `up` starts as the selection's transpose: each kept unit back to its place
            narrow.up.weight.zero_()
            narrow.up.bias.zero_()
            narrow.up.weight[torch.from_numpy(units), torch.arange(config.width)] = 1.0
            for projection in narrow.projections:
                projection.weight.copy_(narrow.up.weight)
                projection.bias.zero_()
        info["kept_hidden_units"] = len(units)
    else:  # each head of the student learns from teacher head of the same index
        kept_heads = [list(range(sc.num_attention_heads)) for _ in mapping]
    info["teacher_heads_of_student_heads"] = kept_heads
    setattr(parent, name, narrow)
    return model, narrow, encoder, kept_heads, info


def slice_into(student, teacher, units: np.ndarray, mapping: list[int], head: int) -> list[list[int]]:
    """Copy the teacher's weights into `student`, restricted to hidden `units`, per student layer m the heads and
    FFN units of teacher layer mapping[m] that weigh most. Returns the kept teacher heads per student layer."""
    import torch

    u = torch.from_numpy(units)
    heads_per_layer = student.config.num_attention_heads
    ffn = student.config.intermediate_size
    kept_heads = []
    with torch.no_grad():
        se, te = student.embeddings, teacher.embeddings
        for part in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            getattr(se, part).weight.copy_(getattr(te, part).weight[:, u])
        se.LayerNorm.weight.copy_(te.LayerNorm.weight[u])
        se.LayerNorm.bias.copy_(te.LayerNorm.bias[u])
        for m, t in enumerate(mapping):
            s_layer, t_layer = student.encoder.layer[m], teacher.encoder.layer[t]
            out_w = t_layer.attention.output.dense.weight[u]  # [kept units, all head dims]
            weight = out_w.reshape(len(u), -1, head).pow(2).sum(dim=(0, 2))
            heads = sorted(torch.argsort(weight, descending=True)[:heads_per_layer].tolist())
            kept_heads.append(heads)
            dims = torch.tensor([h * head + d for h in heads for d in range(head)])
            for part in ("query", "key", "value"):
                src = getattr(t_layer.attention.self, part)
                dst = getattr(s_layer.attention.self, part)
                dst.weight.copy_(src.weight[dims][:, u])
                dst.bias.copy_(src.bias[dims])
            s_layer.attention.output.dense.weight.copy_(out_w[:, dims])
            s_layer.attention.output.dense.bias.copy_(t_layer.attention.output.dense.bias[u])
            w_in, w_out = t_layer.intermediate.dense.weight[:, u], t_layer.output.dense.weight[u]
            score = w_in.norm(dim=1) * w_out.norm(dim=0)
            f = torch.sort(torch.argsort(score, descending=True)[:ffn]).values
            s_layer.intermediate.dense.weight.copy_(w_in[f])
            s_layer.intermediate.dense.bias.copy_(t_layer.intermediate.dense.bias[f])
            s_layer.output.dense.weight.copy_(w_out[:, f])
            s_layer.output.dense.bias.copy_(t_layer.output.dense.bias[u])
            for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
                s_norm, t_norm = s_layer.get_submodule(norm), t_layer.get_submodule(norm)
                s_norm.weight.copy_(t_norm.weight[u])
                s_norm.bias.copy_(t_norm.bias[u])
    return kept_heads


def tinybert_loss(teacher, teacher_encoder, narrow, kept_heads: list[list[int]], mapping: list[int],
                  metric_index: int, feature_index: int | None, config: Config, sequence_mask: str | None,
                  terms: dict | None = None):
    """loss(model, inputs, labels) of the module docstring. The teacher runs on exactly the inputs the student gets.
    `terms`, when given, receives the last batch's value of each term (for tests and progress)."""
    import torch
    import torch.nn.functional as F

    T = config.temperature

    def masked_mse(a, b, mask):  # mean over real tokens and units
        return ((a - b).pow(2) * mask).sum() / (mask.sum() * a.shape[-1])

    def loss(model, inputs, labels):
        with torch.no_grad(), recording(teacher_encoder) as seen:
            t_out = teacher(**inputs)
        t_hidden, t_attn = seen["states"]
        s_out = model(**inputs)
        s_hidden, s_attn = narrow.recorded
        mask = (inputs[sequence_mask] if sequence_mask else torch.ones(s_hidden[0].shape[:2])).unsqueeze(-1).float()
        embd = masked_mse(narrow.projections[0](s_hidden[0]), t_hidden[0], mask)
        hidn = sum(masked_mse((narrow.projections[m + 1] if m + 1 < len(mapping) else narrow.up)(s_hidden[m + 1]),
                              t_hidden[t + 1], mask) for m, t in enumerate(mapping)) / len(mapping)
        key_mask = mask[:, None, :, 0][:, :, None, :]  # [batch, 1, 1, keys]
        query_mask = mask[:, None, :, :]  # [batch, 1, queries, 1]
        attn = 0.0
        for m, t in enumerate(mapping):
            target = t_attn[t][:, kept_heads[m]]
            log_student = torch.log(s_attn[m].clamp(min=1e-9))
            kl = (target * (torch.log(target.clamp(min=1e-9)) - log_student) * key_mask).sum(-1, keepdim=True)
            attn = attn + (kl * query_mask).sum() / (query_mask.sum() * target.shape[1])
        attn = attn / len(mapping)
        s, t = s_out[metric_index], t_out[metric_index]
        pred = config.alpha * T ** 2 * F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
        labelled = labels != UNLABELLED
        if config.alpha < 1 and labelled.any():
            pred = pred + (1 - config.alpha) * F.cross_entropy(s[labelled], labels[labelled])
        if feature_index is not None and config.feature_weight > 0:
            error = (s_out[feature_index] - t_out[feature_index]).pow(2).flatten(1).sum(1).mean()
            pred = pred + config.feature_weight * error
        total = (pred + config.embedding_weight * embd + config.hidden_weight * hidn
                 + config.attention_weight * attn)
        if terms is not None:
            terms.update({k: float(v.detach()) if hasattr(v, "detach") else float(v) for k, v in
                          (("pred", pred), ("embd", embd), ("hidn", hidn), ("attn", attn))})
        return total

    return loss


def token_dropout(rate: float, sequence_mask: str, ids_name: str = "input_ids"):
    """An `augment`: in AUGMENTED_SHARE of the rows, each inner token (not the first or the last real one, the
    [CLS]/[SEP] of a BERT tokenizer) is dropped with probability `rate`; the rest close up and the row is padded
    again. Inputs other than the ids and the mask must not be per-token."""

    def augment(batch: dict, rng) -> dict:
        ids, mask = batch[ids_name], batch[sequence_mask]
        lengths = mask.sum(axis=1)
        chosen = rng.random(len(ids)) < AUGMENTED_SHARE
        drop = rng.random(ids.shape) < rate
        new_ids, new_mask = np.zeros_like(ids), np.zeros_like(mask)
        for row in range(len(ids)):
            n = int(lengths[row])
            keep = np.ones(n, dtype=bool)
            if chosen[row] and n > 2:
                keep[1:n - 1] = ~drop[row, 1:n - 1]
            kept = ids[row, :n][keep]
            new_ids[row, :len(kept)] = kept
            new_mask[row, :len(kept)] = 1
        width = max(int(new_mask.sum(axis=1).max()), 1)
        return {**batch, ids_name: new_ids[:, :width], sequence_mask: new_mask[:, :width]}

    return augment


def deduplicated(inputs: dict, against: list[Split]) -> tuple[dict, int]:
    """`inputs` (name -> array) without rows equal (padding ignored, as example_key compares them) to a row of any
    split in `against`, nor to an earlier row. Returns (the kept rows, how many were dropped)."""
    seen = set()
    for split in against:
        arrays = list(split.inputs.values())
        seen.update(example_key(a[row] for a in arrays) for row in range(len(split)))
    arrays = [inputs[name] for name in inputs]
    keep = []
    for row in range(len(arrays[0])):
        key = example_key(a[row] for a in arrays)
        if key not in seen:
            seen.add(key)
            keep.append(row)
    keep = np.array(keep, dtype=int)
    return {name: array[keep] for name, array in inputs.items()}, len(arrays[0]) - len(keep)


def pad_to(array: np.ndarray, width: int) -> np.ndarray:
    if array.ndim < 2 or array.shape[1] >= width:
        return array
    pad = [(0, 0)] * array.ndim
    pad[1] = (0, width - array.shape[1])
    return np.pad(array, pad)


def teaching_split(spec, splits: dict, workdir, unlabelled: str | None) -> tuple[Split, dict]:
    """The train split plus the deduplicated unlabelled rows (label UNLABELLED), and facts for the record."""
    train = splits[spec.train_split]
    if unlabelled is None:
        return train, {"unlabelled_rows": 0}
    extra = resolve_callable(unlabelled, spec.source)(workdir)
    if set(extra) != set(train.inputs):
        raise VariantError(f"tinybert: `unlabelled` ({unlabelled}) returned inputs {sorted(extra)}, the model takes "
                           f"{sorted(train.inputs)}")
    held_out = {spec.validation_split, *spec.evaluate}
    offered = len(next(iter(extra.values())))
    extra, dropped = deduplicated(extra, [splits[name] for name in sorted(held_out)] + [train])
    rows = len(next(iter(extra.values())))
    width = max(train.inputs[spec.sequence_mask].shape[1] if spec.sequence_mask else 0,
                *(a.shape[1] for a in extra.values() if a.ndim > 1))
    inputs = {name: np.concatenate([pad_to(train.inputs[name], width), pad_to(extra[name], width)])
              for name in train.inputs}
    labels = np.concatenate([train.labels, np.full(rows, UNLABELLED, dtype=train.labels.dtype)])
    return Split(inputs, labels), {"unlabelled_source": unlabelled, "unlabelled_offered": offered,
                                   "unlabelled_dropped_as_duplicates": dropped, "unlabelled_rows": rows,
                                   "deduplicated_against": sorted(held_out | {spec.train_split})}


def train_student(model, context, config: Config, terms: dict | None = None):
    """Build the narrow student from `model` and train it from context.teacher on context's splits; returns
    (the served student in eval mode, the trained projections W_e/W_h as a ModuleList, info for the record)."""
    from ..train import feature_output_index

    spec = context.spec
    teacher = copy.deepcopy(context.teacher).eval()  # recording() hooks its encoder; other variants share it
    train = context.splits[spec.train_split]
    model, narrow, _, kept_heads, info = build_student(model.eval(), config, train, spec.sequence_mask)
    teacher_encoder = find_encoder(teacher)[2]
    names = [t.name for t in spec.outputs]
    metric_index = names.index(spec.metric.output)
    feature_index = feature_output_index(spec, config.feature_output)
    validation = context.splits[spec.validation_split].spread(256)
    info["student_untrained_validation_accuracy"] = torch_accuracy(model.eval(), spec, validation)
    split, data_facts = teaching_split(spec, context.splits, context.workdir, config.unlabelled)
    info.update(data_facts, token_dropout=config.token_dropout)
    augment = token_dropout(config.token_dropout, spec.sequence_mask) if config.token_dropout > 0 else None
    if augment is not None and not spec.sequence_mask:
        raise VariantError("tinybert: token_dropout needs the spec's sequence_mask")
    loss = tinybert_loss(teacher, teacher_encoder, narrow, kept_heads, info["teacher_layer_of_student_layer"],
                         metric_index, feature_index, config, spec.sequence_mask, terms)
    model, facts = run_training(model, loss, split, spec, train_config(spec, config), context.progress, "tinybert",
                                augment)
    context.notes.setdefault("training", {})["tinybert"] = facts
    projections = narrow.projections
    narrow.projections = None  # training-only: not part of the served model
    narrow.recorded = None
    info["student_validation_accuracy"] = torch_accuracy(model, spec, validation)
    info["validation_examples"] = len(validation)
    return model.eval(), projections, info


def apply(model, context, config: Config):
    student, _, info = train_student(model, context, config)
    context.notes["tinybert"] = info
    context.progress(f"tinybert: the student's accuracy on {info['validation_examples']} validation examples "
                     f"{info['student_untrained_validation_accuracy']:.4f} untrained -> "
                     f"{info['student_validation_accuracy']:.4f} distilled")
    return student
