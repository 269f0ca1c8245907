# Sourced by bin/test: checkov (the chart's policy scan) in a virtualenv of its own, because its
# pinned dependencies are not ours. Installed in the background while the suite starts; the
# chart test waits for it (CHECKOV_BIN names the binary, CHECKOV_READY appears when the install
# ended, CHECKOV_LOG says how). NOTAFLOW_SKIP_CHECKOV is not read: set CHECKOV_BIN= to skip.
checkov_venv="$root/.tools/checkov"
checkov_version="3.3.30"
export CHECKOV_BIN="${CHECKOV_BIN-$checkov_venv/bin/checkov}"
export CHECKOV_READY="$checkov_venv.ready"
export CHECKOV_LOG="$checkov_venv.log"
if [ -n "$CHECKOV_BIN" ] && [ "$CHECKOV_BIN" = "$checkov_venv/bin/checkov" ] \
   && ! grep -qx "$checkov_version" "$CHECKOV_READY" 2>/dev/null; then
  mkdir -p "$root/.tools"
  rm -f "$CHECKOV_READY"
  (
    { "$python" -m venv "$checkov_venv" \
      && "$checkov_venv/bin/python" -m pip install -q --disable-pip-version-check \
           "checkov==$checkov_version"; } >"$CHECKOV_LOG" 2>&1 \
      && echo "$checkov_version" >"$CHECKOV_READY" || echo failed >"$CHECKOV_READY"
  ) </dev/null &
fi
