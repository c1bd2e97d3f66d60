"""Triton Python model: raw text -> token ids and attention mask, with the model's own `tokenizer.json`.

Written by `builder build --text-endpoint` as `<model>_tokenizer/<version>/model.py`, next to the tokenizer.json of
the model's artifacts (no hub access). Runs on the embedded server and on the official image (the `tokenizers`
library: the kit's environment, or `docker/Dockerfile`).

Input `TEXT`: TYPE_STRING [batch, 1], UTF-8. Outputs (names in the parameters `ids_output` and `mask_output`): INT64
[batch, tokens], each request right-padded with id 0 and mask 0 to the smallest of the `length_buckets` parameter's
lengths (comma-separated, ascending, the last = `max_length`) that holds its longest text, so that the encoder's
dynamic batcher, which joins only equal shapes, can batch requests of one bucket. A masked position does not change
a masked encoder's outputs; 0 is also what the kit's data splits pad with. Without `length_buckets` (a repository
built before it), each request is padded to its own longest text. A text longer than `max_length`
tokens (special tokens included) is cut to its first `max_length` tokens, as the client's `--text` and the training
data are. An empty or whitespace-only text, or bytes that are not UTF-8, fail their request with an INVALID_ARG error
that names the row; the other requests handed over in the same dynamic batch are answered.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

TEXT_INPUT = "TEXT"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.ids_output, self.mask_output = parameters["ids_output"], parameters["mask_output"]
        path = os.path.join(args["model_repository"], args["model_version"], "tokenizer.json")
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"{config['name']}: {path} is missing; rebuild with --text-endpoint")
        self.tokenizer = Tokenizer.from_file(path)
        self.tokenizer.no_padding()  # padded here, per request
        self.tokenizer.enable_truncation(max_length=int(parameters["max_length"]))
        self.buckets = [int(b) for b in parameters.get("length_buckets", "").split(",") if b.strip()]

    def execute(self, requests):
        responses = [None] * len(requests)
        texts, owners = [], []  # every valid request's texts, tokenized in one call: (request index, start, count)
        for index, request in enumerate(requests):
            rows = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT).as_numpy().reshape(-1)
            try:
                decoded = [decode(value, row) for row, value in enumerate(rows)]
            except ValueError as e:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG))
                continue
            owners.append((index, len(texts), len(decoded)))
            texts.extend(decoded)
        encodings = self.tokenizer.encode_batch(texts) if texts else []
        for index, start, count in owners:
            own = encodings[start:start + count]
            longest = max(len(e.ids) for e in own)
            ids = np.zeros((count, next((b for b in self.buckets if b >= longest), longest)), dtype=np.int64)
            mask = np.zeros_like(ids)
            for row, encoding in enumerate(own):
                ids[row, :len(encoding.ids)] = encoding.ids
                mask[row, :len(encoding.ids)] = 1
            responses[index] = pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(self.ids_output, ids), pb_utils.Tensor(self.mask_output, mask)])
        return responses


def decode(value, row: int) -> str:
    """One TEXT element as str. Raises ValueError, naming the row, for bytes that are not UTF-8 and empty text."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{TEXT_INPUT}[{row}] is not valid UTF-8 (byte 0x{value[e.start]:02x} at offset "
                             f"{e.start}); send UTF-8 text") from None
    if not str(value).strip():
        raise ValueError(f"{TEXT_INPUT}[{row}] is empty; send the text to classify")
    return str(value)
