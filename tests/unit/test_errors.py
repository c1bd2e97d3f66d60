"""One error hierarchy, one handler: an error from each part of the kit ends as `error:`/`hint:` and exit code 2,
with a traceback only under --verbose. Includes a client error raised in the middle of `builder demo`."""

import pytest

import builder.demo as demo
from builder import cli
from builder.core.errors import ArtifactsError, BuilderError, KitError
from builder.core.handler import EXIT_ERROR
from builder.core.spec import load_spec
from builder.serving.server import free_port
from client import ClientError, ServerUnavailableError
from client.commands import main as client_main
from loadtests.commands import main as loadtests_main
from tests.conftest import TINY_SPEC


def assert_error_hint(capsys, code, message):
    err = capsys.readouterr().err
    assert code == EXIT_ERROR, err
    assert f"error: {message}" in err and "\nhint: " in err
    assert "Traceback" not in err
    return err


def test_one_base_for_every_part():
    assert issubclass(BuilderError, KitError) and issubclass(ClientError, KitError)
    assert issubclass(ArtifactsError, BuilderError)


def test_builder_error(capsys):
    assert_error_hint(capsys, cli.main(["build", "--model", "minlm"]), "unknown model `minlm`")


def test_a_batching_delay_over_the_budget_is_refused_before_anything_is_written(capsys, tmp_path):
    code = cli.main(["build", "--model", "digits", "--variant", "fp32", "--max-queue-delay-us", "60000",
                     "--repository", str(tmp_path / "r"), "--artifacts", str(tmp_path / "a")])
    assert_error_hint(capsys, code, "a batching delay of 60 ms leaves nothing of the p99 latency budget of 50 ms")
    assert not (tmp_path / "r").exists()


def test_builder_error_verbose_shows_the_traceback(capsys):
    assert cli.main(["--verbose", "build", "--model", "minlm"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "error: unknown model `minlm`" in err


def test_client_error(capsys):
    code = client_main(["models", "--url", f"http://127.0.0.1:{free_port()}"])
    assert_error_hint(capsys, code, "Triton server not reachable")


def test_artifacts_error_in_the_client_command(capsys, tmp_path):
    code = client_main(["infer", "--model", "tiny_fp32", "--index", "0", "--artifacts", str(tmp_path),
                        "--url", f"http://127.0.0.1:{free_port()}"])
    assert_error_hint(capsys, code, "no build record for model `tiny_fp32`")


def test_loadtests_error(capsys, tmp_path):
    assert_error_hint(capsys, loadtests_main(["report", str(tmp_path)]), f"{tmp_path}/results.json does not exist")


class DeadServer:
    """Stands in for the embedded server the demo starts: nothing listens at its URLs (it went away)."""

    def __init__(self, *args, **kwargs):
        port = free_port()
        self.http_url, self.grpc_url = f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{port}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def models(self):
        return []


def test_a_client_error_during_the_demo_is_error_and_hint(capsys, monkeypatch, tmp_path):
    """The demo's served-accuracy phase talks to a server that is not there: the real client raises
    ServerUnavailableError, and `builder demo` prints it as error/hint instead of a traceback."""
    monkeypatch.setattr(demo, "DEMO_MODELS", ("tiny",))
    monkeypatch.setattr(demo, "resolve_spec", lambda name: load_spec(TINY_SPEC))
    monkeypatch.setattr(demo, "build_all", lambda *args, **kwargs: [])  # nothing to build: the failure is later
    monkeypatch.setattr(demo, "EmbeddedServer", DeadServer)
    monkeypatch.setattr(demo.repo, "latest_model_file", lambda repository, name: tmp_path / "model.onnx")
    seen = []
    real_infer = demo.TritonClient.infer

    def infer(self, model, inputs, outputs=None):
        try:
            return real_infer(self, model, inputs, outputs)
        except ClientError as e:
            seen.append(e)
            raise

    monkeypatch.setattr(demo.TritonClient, "infer", infer)
    code = cli.main(["demo", "--quick", "--repository", str(tmp_path / "r"), "--artifacts", str(tmp_path / "a"),
                     "--reports", str(tmp_path / "reports")])
    assert_error_hint(capsys, code, "Triton server not reachable")
    assert seen and isinstance(seen[0], ServerUnavailableError)


@pytest.mark.parametrize("argv", [["--help"]])
def test_help_still_answers(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 0 and "build" in capsys.readouterr().out


def test_the_load_tests_and_the_client_answer_under_builder_too(capsys, tmp_path):
    # the same commands, errors and exit codes as `python -m loadtests` / `python -m client`
    assert_error_hint(capsys, cli.main(["report", str(tmp_path)]), f"{tmp_path}/results.json does not exist")
    assert_error_hint(capsys, cli.main(["models", "--url", f"http://127.0.0.1:{free_port()}"]),
                      "Triton server not reachable")
    assert cli.main(["--verbose", "report", str(tmp_path)]) == EXIT_ERROR
    assert "Traceback" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli.main(["load", "--help"])
    assert exit_.value.code == 0 and "--users" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0 and "overload" in capsys.readouterr().out


def test_builder_delegates_every_load_test_and_client_command():
    from client.commands import main as client_main  # noqa: F401 - the module whose commands are listed
    from loadtests.commands import COMMANDS

    delegated = {their for package, their in cli.DELEGATED.values() if package == "loadtests"}
    assert delegated == set(COMMANDS)


def test_every_script_entry_goes_through_the_one_handler():
    """Every `if __name__ == "__main__"` of the product runs its body through run_command (directly or through a
    command module's main, which does), except the HTTP front: the official image runs that file by path with the
    standard library alone."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    exempt = {"builder/serving/front.py"}
    outside = []
    for path in sorted(p for package in ("builder", "client", "loadtests") for p in (root / package).rglob("*.py")):
        text = path.read_text()
        if '__name__ == "__main__"' not in text or str(path.relative_to(root)) in exempt:
            continue
        entry = text[text.index('__name__ == "__main__"'):]
        if "from .commands import main" in text:  # a package's __main__: its commands module's (or package's) main
            commands = path.parent / "commands.py"
            text = (commands if commands.is_file() else path.parent / "commands" / "__init__.py").read_text()
        # the handler in the entry itself, or in the main() it calls
        through = "run_command(" in entry or ("main()" in entry and "return run_command(" in text)
        if not through:
            outside.append(str(path.relative_to(root)))
    assert outside == []
