#!/usr/bin/env bash
# Lints every shell script in the repository with shellcheck (Debian's
# package, installed by tests/deps.sh): the files git tracks that end in
# .sh or start with a sh/bash shebang. Run from anywhere; exits non-zero on
# any finding. Settings are in .shellcheckrc.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v shellcheck >/dev/null || { echo "shellcheck is missing: run tests/deps.sh" >&2; exit 1; }

scripts=()
while IFS= read -r -d '' f; do
    [ -f "$f" ] || continue
    case $f in
        *.sh) scripts+=("$f") ;;
        *) if head -n1 "$f" | grep -Eq '^#!\s*(/usr)?/bin/(env\s+)?(ba|da)?sh\b'; then scripts+=("$f"); fi ;;
    esac
done < <(git ls-files -z)

shellcheck --version | sed -n 's/^version: /shellcheck /p'
shellcheck "${scripts[@]}"
echo "shellcheck: ${#scripts[@]} scripts, no findings"
