# Sourced by the scripts that run on a lent device machine (scripts/train_gpu.sh, scripts/gpu_checks.sh):
# that machine has torch but no network, so this project's other packages travel in .devsite/ (ignored
# by git) and are unpacked into /tmp/site there. Fill it here, once (x86-64 wheels for Python 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_24_x86_64 \
#     --platform any -d .devsite transformers==5.23.0 easy-vqa==1.0 bitsandbytes==0.50.2
# (bitsandbytes' wheel holds a library for every CUDA version, 43 MB; keep only the one the device's
# torch uses and the CPU one, re-zipped, to stay inside the tool's 64 MiB.)
if ls .devsite/*.whl .devsite/*.zip >/dev/null 2>&1; then
  python3 - <<'PY'
import glob, zipfile
for path in glob.glob(".devsite/*.whl") + glob.glob(".devsite/*.zip"):
    zipfile.ZipFile(path).extractall("/tmp/site")
PY
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
