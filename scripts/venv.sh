# Sourced by scripts/serve and scripts/test. `venv_install SPEC STAMP` makes .venv when it
# is missing and installs SPEC into it (editable) when pyproject.toml is newer than STAMP.
# A first run is what a newcomer waits through, so it is quick and says what it does:
# - The installer is uv when there is one (on PATH, beside $PYTHON, or in .venv), else pip
#   fetches uv into .venv first: pip alone spent ~30 s here on the runtime dependencies,
#   most of it reading the package index's very long pages (pydantic-core's lists ~15,000
#   files) one package after another; uv does the same install in a few seconds. uv gets
#   pip's index settings (scripts/uv_install.py), and if it fails, pip installs instead.
# - The venv gets no pip of its own (ensurepip alone takes 5-10 s): uv does not need one,
#   and $PYTHON's pip installs into it (`pip --python`, pip 22.3+).
# - Modules are not all compiled to bytecode up front: Python compiles what it imports.
# SWITCHBOARD_INSTALLER=pip skips uv. Progress goes to standard error.

venv_install() {
  local spec=$1 stamp=$2 self uv=""
  self=$("$PYTHON" -c 'import sys; print(sys.executable)')
  local outer_pip=false
  "$PYTHON" -m pip --python "$self" --version >/dev/null 2>&1 && outer_pip=true
  if [ "${SWITCHBOARD_INSTALLER:-uv}" != pip ]; then
    uv=$(command -v uv || true)
    [ -z "$uv" ] && [ -x "$(dirname "$self")/uv" ] && uv=$(dirname "$self")/uv
  fi
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
    echo "switchboard: creating .venv" >&2
    if [ -n "$uv" ] || $outer_pip; then
      "$PYTHON" -m venv --without-pip .venv
    else
      "$PYTHON" -m venv .venv
    fi
  fi
  if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
    return 0  # installed, and packaging unchanged (an editable install sees source edits)
  fi
  [ -z "$uv" ] && [ "${SWITCHBOARD_INSTALLER:-uv}" != pip ] && [ -x .venv/bin/uv ] && uv=.venv/bin/uv
  local pip=("$PYTHON" -m pip --python .venv/bin/python)
  [ -x .venv/bin/pip ] && pip=(.venv/bin/python -m pip)
  local started=$SECONDS
  if [ -z "$uv" ] && [ "${SWITCHBOARD_INSTALLER:-uv}" != pip ]; then
    echo "switchboard: fetching uv, a fast installer, into .venv with pip" >&2
    if "${pip[@]}" install --quiet --no-compile --disable-pip-version-check uv; then
      uv=.venv/bin/uv
    else
      echo "switchboard: could not fetch uv: pip installs instead (slower)" >&2
    fi
  fi
  echo "switchboard: installing $spec and its dependencies into .venv" >&2
  if [ -n "$uv" ] && "$PYTHON" scripts/uv_install.py "$uv" .venv/bin/python --quiet -e "$spec"
  then
    :
  else
    [ -n "$uv" ] && echo "switchboard: uv failed: installing with pip instead" >&2
    if [ ! -x .venv/bin/pip ] && ! $outer_pip; then
      .venv/bin/python -m ensurepip --default-pip >/dev/null
      pip=(.venv/bin/python -m pip)
    fi
    "${pip[@]}" install --quiet --no-compile --disable-pip-version-check -e "$spec"
  fi
  touch "$stamp"
  echo "switchboard: installed in $((SECONDS - started)) s" >&2
}
