#!/usr/bin/env bash
# Regenerate tiffin/proto's Python modules from KEDA's external-scaler proto (a verbatim copy of KEDA's file).
# protoc writes `import externalscaler_pb2` into the grpc module, which only works with tiffin/proto on
# sys.path; rewrite it to an absolute import so the modules live inside the tiffin package.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
"$PYTHON" -m grpc_tools.protoc -I tiffin/proto --python_out=tiffin/proto --pyi_out=tiffin/proto \
    --grpc_python_out=tiffin/proto tiffin/proto/externalscaler.proto
sed -i 's/^import externalscaler_pb2 as externalscaler__pb2$/from tiffin.proto import externalscaler_pb2 as externalscaler__pb2/' \
    tiffin/proto/externalscaler_pb2_grpc.py
grep -q '^from tiffin.proto import externalscaler_pb2 as' tiffin/proto/externalscaler_pb2_grpc.py \
    || { echo "gen_proto.sh: could not rewrite the import in externalscaler_pb2_grpc.py" >&2; exit 1; }
