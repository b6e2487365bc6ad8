#!/usr/bin/env bash
# The wheel as a library user gets it: a fresh virtual environment holding the wheel and its declared
# dependencies only (pinned to this machine's builds by constraints.txt), used from outside the source tree.
# Usage: scripts/check_wheel.sh DIST_DIR VENV_DIR   (make wheel-check)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dist="$(cd "$1" && pwd)"
venv="$2"
data="${FCNSEG_DATA:-$repo/../shared/data}"
data="$(cd "$data" && pwd)"
fail() { echo "wheel-check: $*" >&2; exit 1; }

wheels=("$dist"/fcnseg-*.whl)
[ ${#wheels[@]} -eq 1 ] && [ -f "${wheels[0]}" ] || fail "expected one fcnseg wheel in $dist"
rm -rf "$venv"
python3 -m venv "$venv"
venv="$(cd "$venv" && pwd)"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -c "$repo/constraints.txt" "${wheels[0]}"
"$venv/bin/pip" check

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"  # nothing of the checkout on sys.path
where="$("$venv/bin/python" -c 'import fcnseg; print(fcnseg.__file__)')"
case "$where" in "$venv"/*) ;; *) fail "fcnseg imported from $where, not from the fresh environment" ;; esac

meta="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("fcnseg"))')"
shown="$("$venv/bin/fcnseg" --version)"
[ "$shown" = "fcnseg $meta" ] || fail "fcnseg --version says '$shown', the metadata says $meta"

"$venv/bin/fcnseg" predict --checkpoint "$repo/benchmarks/camvid/fcn8s_efficientnet_lite0_camvid.pt" \
    "$data/camvid/val/0016E5_07959.png" -o predictions
"$venv/bin/python" - <<'PY'
import numpy as np
from PIL import Image
labels = Image.open("predictions/0016E5_07959.png")
assert labels.mode == "P" and labels.size == (480, 360), (labels.mode, labels.size)
assert len(np.unique(np.asarray(labels))) > 3, "a CamVid street scene has more than three classes"
PY

# Extras that are not installed are named in one line, exit 2, no traceback.
set +e
msg="$("$venv/bin/fcnseg" serve --checkpoint "$repo/benchmarks/camvid/fcn8s_efficientnet_lite0_camvid.pt" 2>&1)"
code=$?
set -e
[ $code -eq 2 ] && [[ "$msg" == *"pip install 'fcnseg[serve]'"* ]] && [[ "$msg" != *Traceback* ]] \
    || fail "fcnseg serve without the serve extra: exit $code: $msg"
echo "wheel-check: $(basename "${wheels[0]}") installs alone and predicts; $shown"
