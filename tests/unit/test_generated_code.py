"""The generated protobuf code in detector/v1 must be what protos/ produces today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_not_stale(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
                    str(ROOT / "protos/detector/v1/detector.proto")], check=True)
    for name in ("detector_pb2.py", "detector_pb2_grpc.py", "detector_pb2.pyi"):
        fresh = (tmp_path / "detector/v1" / name).read_text()
        assert (ROOT / "detector/v1" / name).read_text() == fresh, f"detector/v1/{name} is stale: run scripts/gen_protos.sh"
