# Sourced by scripts/serve and scripts/test. `venv_install SPEC STAMP` makes .venv when it
# is missing and installs SPEC into it (editable) when pyproject.toml is newer than STAMP.
# A first run is what a newcomer waits through, so it is quick: the venv gets no pip of its
# own when $PYTHON's pip can install into it (`pip --python`, pip 22.3+; ensurepip alone
# takes 5-10 s), and modules are not all compiled to bytecode up front (`--no-compile`:
# Python compiles what it imports, once). Progress goes to standard error.

venv_install() {
  local spec=$1 stamp=$2
  local outer=("$PYTHON" -m pip --python .venv/bin/python)
  if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
    echo "switchboard: creating .venv" >&2
    local self
    self=$("$PYTHON" -c 'import sys; print(sys.executable)')
    if "$PYTHON" -m pip --python "$self" --version >/dev/null 2>&1; then
      "$PYTHON" -m venv --without-pip .venv
    else
      "$PYTHON" -m venv .venv
    fi
  fi
  if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
    return 0  # installed, and packaging unchanged (an editable install sees source edits)
  fi
  local pip=("${outer[@]}")
  [ -x .venv/bin/pip ] && pip=(.venv/bin/python -m pip)
  echo "switchboard: installing $spec and its dependencies into .venv (first run: 15-30 s)" >&2
  local started=$SECONDS
  "${pip[@]}" install --quiet --no-compile --disable-pip-version-check -e "$spec"
  touch "$stamp"
  echo "switchboard: installed in $((SECONDS - started)) s" >&2
}
