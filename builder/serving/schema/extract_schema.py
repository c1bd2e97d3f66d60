"""Regenerate model_config_2_51.binpb: Triton's ModelConfig schema exactly as server 2.51 (container 24.10) knows it.

The serialized FileDescriptorProto is taken from the tritonclient 2.51.0 wheel, which was built from the same
release branch as the server. Newer tritonclient protos know fields that server 2.51 rejects, so the kit never
validates against them. Run:  python builder/serving/schema/extract_schema.py
"""

import ast
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

WHEEL_MEMBER = "tritonclient-2.51.0.data/purelib/tritonclient/grpc/model_config_pb2.py"
TARGET = pathlib.Path(__file__).with_name("model_config_2_51.binpb")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        "tritonclient==2.51.0"], check=True)
        wheel = next(pathlib.Path(tmp).glob("tritonclient-2.51.0-*.whl"))
        source = zipfile.ZipFile(wheel).read(WHEEL_MEMBER).decode()
    blob = re.search(r"AddSerializedFile\((b'.*?')\)\n", source, re.S).group(1)
    TARGET.write_bytes(ast.literal_eval(blob))
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    from builder.core.handler import run_command

    sys.exit(run_command(lambda: main() or 0))
