"""What Triton reads and runs: the model repository and its config.pbtxt (repository, tritonconfig, schema/), the
embedded tritonserver (server) with the kit's Python-based `onnxruntime` backend (backends/), and the served
footprint of a model (footprint). Used by the build (it writes the repository) and by the load tests."""
