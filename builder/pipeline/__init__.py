"""The build pipeline, build-only: model sources, torch-level variants, export, ONNX-level variants, training,
measurement and the build stage that writes a variant (docs/architecture.md). Nothing shared lives here: the load
tests and the client never import it (the `loadtests-apart` contract in pyproject.toml); what they share with it is
in builder/core (records, specs, data, errors) and builder/serving (the repository and the server)."""
