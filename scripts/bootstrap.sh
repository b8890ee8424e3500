#!/usr/bin/env bash
# Create or update the project-local virtual environment (.venv). Cheap when up to date:
# it reinstalls only when requirements.txt, pyproject.toml (entry points, packages) or this
# script changed since the last success.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
VENV=.venv
STAMP="$VENV/.bootstrap-stamp"
want="$(cat requirements.txt pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
  exit 0
fi
echo "bootstrap: setting up $VENV (first run takes a few minutes) ..." >&2
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
section() { awk -v s="[$1]" '/^# \[/{on=($2"" == s)} on && !/^#/ && NF' requirements.txt; }
# pip 26 rejects openpifpaf-vita's metadata (a direct-URL extra); 24.3.1 accepts it.
"${pip[@]}" $(section build | grep '^pip==')
mapfile -t build < <(section build | grep -v '^pip==')
"${pip[@]}" "${build[@]}"
# openpifpaf's build-system pins a torch the isolated build would download; build it
# against the torch installed above instead.
mapfile -t opp < <(section openpifpaf)
"${pip[@]}" --no-build-isolation "${opp[@]}"
mapfile -t runtime < <(section runtime)
"${pip[@]}" "${runtime[@]}"
# Installed without their declared dependencies (mediapipe's would downgrade numpy below 2).
mapfile -t nodeps < <(section nodeps)
"${pip[@]}" --no-deps "${nodeps[@]}"
"${pip[@]}" --no-deps -e .
"$VENV/bin/python" -c "import torch, torchvision, openpifpaf, ray, mediapipe, pytorch_fid; print('bootstrap: torch', torch.__version__, 'torchvision', torchvision.__version__, 'openpifpaf', openpifpaf.__version__, 'ray', ray.__version__)" >&2
echo "$want" > "$STAMP"
