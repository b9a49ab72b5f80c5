#!/usr/bin/env sh
# Points every alert's runbook_url at your runbooks: rewrites alerts/orchestrator.rules.yml (or the file
# given second) from one pattern, where %s is the alert name in lower case (the anchor docs/runbook.md
# uses), as the kubernetes-mixin's runbookURLPattern does.
#
#   scripts/runbook-urls.sh 'https://runbooks.example.com/fog-orchestrator/%s'
#   scripts/runbook-urls.sh 'https://git.example.com/ops/fog/-/blob/main/docs/runbook.md#%s'
set -eu
pattern=${1:?usage: scripts/runbook-urls.sh PATTERN [RULES_FILE]  (PATTERN has one %s: the lower-case alert name)}
rules=${2:-alerts/orchestrator.rules.yml}
case "$pattern" in
  *%s*) ;;
  *) echo "error: the pattern needs a %s for the alert name: $pattern" >&2; exit 2 ;;
esac
python3 - "$pattern" "$rules" <<'PY'
import re, sys
pattern, path = sys.argv[1], sys.argv[2]
out, alert = [], None
for line in open(path, encoding="utf-8").read().splitlines(keepends=True):
    found = re.match(r"\s*- alert: (\S+)", line)
    if found:
        alert = found.group(1)
    if line.startswith("#   ") and "%s" in line:
        line = "#   " + pattern + "\n"
    elif re.match(r"\s*runbook_url: ", line) and alert:
        indent = line[: len(line) - len(line.lstrip())]
        line = f'{indent}runbook_url: "{pattern.replace("%s", alert.lower())}"\n'
    out.append(line)
open(path, "w", encoding="utf-8").write("".join(out))
PY
echo "runbook_url of every alert in $rules now follows $pattern"
