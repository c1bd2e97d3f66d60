"""A rebuild replaces a model in place while the server keeps serving the version it loaded."""

import numpy as np
import pytest

from builder.pipeline.build import build_variant
from builder.serving.repository import versions
from builder.serving.server import EmbeddedServer, free_port
from builder.core.spec import load_spec
from client import TritonClient
from tests.conftest import TINY_SPEC

pytestmark = pytest.mark.e2e
TOKENS = {"tokens": np.arange(6, dtype=np.int64)[None, :]}


def test_rebuild_while_serving(tmp_path, built):
    spec = load_spec(TINY_SPEC)
    repository = tmp_path / "repo"
    build_variant(spec, "fp32", repository, built["artifacts"], command="tests")
    with EmbeddedServer(repository, free_port(), free_port(), free_port()) as server, \
            TritonClient(server.http_url) as client:
        before = client.infer("tiny_fp32", TOKENS)["logits"]
        build_variant(spec, "fp32", repository, built["artifacts"], command="tests")
        assert versions(repository / "tiny_fp32") == [2]
        np.testing.assert_array_equal(client.infer("tiny_fp32", TOKENS)["logits"], before)  # still serving
        client.load_model("tiny_fp32")  # explicit model control: pick up the new version
        assert client.metadata("tiny_fp32")["versions"] == ["2"]
        np.testing.assert_array_equal(client.infer("tiny_fp32", TOKENS)["logits"], before)  # same seeded model
