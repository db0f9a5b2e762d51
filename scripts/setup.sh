#!/usr/bin/env bash
# Set up searle-study on a fresh machine; safe to run again (each step is skipped when already done).
#
#   1. .venv with Python 3.11 (recreated when it holds another Python);
#   2. pip install -r requirements.txt -c constraints.txt, then the package itself (--no-deps -e .),
#      skipped when the stamp .venv/.searle-setup-stamp holds the hash of requirements, constraints and pyproject;
#   3. an ipykernel "searle-study" inside the venv (--sys-prefix), which papermill uses to run the notebooks;
#   4. Debian's chromium + chromium-driver for the browser test of the book (apt-get; sudo when not root).
#      SEARLE_SKIP_BROWSER=1 skips this step; when it is impossible the script says so and goes on.
#
# Environment: PYTHON (interpreter to build the venv from; default python3.11, then python3), VENV (default .venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
KERNEL=searle-study
STAMP="$VENV/.searle-setup-stamp"
say() { echo "[setup] $*"; }

# --- 1. the virtual environment -------------------------------------------------------------------------------
find_python() {
    for cand in ${PYTHON:-} python3.11 python3; do
        if command -v "$cand" >/dev/null 2>&1 &&
           "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            command -v "$cand"; return 0
        fi
    done
    return 1
}

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    say "$VENV holds $("$VENV/bin/python" --version 2>&1), not Python 3.11: recreating it"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    PY=$(find_python) || { echo "[setup] error: Python 3.11 not found; install it or set PYTHON=/path/to/python3.11" >&2; exit 1; }
    say "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi

# --- 2. packages ------------------------------------------------------------------------------------------------
want=$(cat requirements.txt constraints.txt pyproject.toml | sha256sum | cut -c1-16)
have=$(cat "$STAMP" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
    say "installing requirements (pinned by constraints.txt); torch comes from this machine's local wheels where pip is set up for it"
    # The venv takes ~6.2 GiB on x86_64 (torch's CUDA build), plus pip's unpacking space: warn before pip fails
    # midway with "No space left on device".
    free_gib=$(df -Pk "$VENV" | awk 'NR == 2 {print int($4 / 1048576)}')
    if [ -n "$free_gib" ] && [ "$free_gib" -lt 8 ]; then
        say "warning: only $free_gib GiB free on the disk that holds $VENV; the packages need about 8 GiB while" \
            "installing (torch's CUDA build); free some space (or set VENV to a folder on a larger disk) if pip" \
            "stops with 'No space left on device'"
    fi
    # (this machine's pip config lists local wheel folders; its "Location ... is ignored" notes are dropped)
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r requirements.txt -c constraints.txt \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    "$VENV/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e . \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "$want" > "$STAMP"
else
    say "packages up to date (stamp $want)"
fi

# --- 3. the Jupyter kernel papermill runs the notebooks with ------------------------------------------------------
# Registered inside the venv so that it never points at another interpreter; re-registered if the venv moved.
spec="$VENV/share/jupyter/kernels/$KERNEL/kernel.json"
if [ ! -f "$spec" ] || ! grep -q "\"$(cd "$VENV" && pwd)/bin/python" "$spec"; then
    say "registering Jupyter kernel '$KERNEL' in $VENV"
    "$VENV/bin/python" -m ipykernel install --sys-prefix --name "$KERNEL" --display-name "Python 3.11 (searle-study)" >/dev/null
fi

# --- 4. Chromium for the browser test ---------------------------------------------------------------------------
if [ "${SEARLE_SKIP_BROWSER:-0}" = "1" ]; then
    say "SEARLE_SKIP_BROWSER=1: not installing chromium (the browser test will skip)"
elif command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    say "chromium and chromedriver present"
else
    if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="none"; fi
    if [ "$SUDO" = "none" ] || ! command -v apt-get >/dev/null 2>&1; then
        say "cannot install chromium here (needs apt-get and root or password-less sudo);" \
            "the browser test will skip; install Debian's 'chromium' and 'chromium-driver' by hand to run it"
    else
        say "installing Debian's chromium and chromium-driver (apt-get)"
        if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; }; then
            say "apt-get could not install chromium; the browser test will skip"
        fi
    fi
fi
say "done"
