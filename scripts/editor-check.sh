#!/usr/bin/env bash
# Proves what an editor shows for calico/v1 YAML: runs the real yaml-language-server
# (from the npm registry, pinned in scripts/editor-check/package.json) over examples/
# (no errors expected) and over a multi-document file with one error per document (each
# must be reported, so the per-document modeline and the schema's rules reach editors).
# Needs Node.js and npm; not part of scripts/test.sh, which needs neither.
set -euo pipefail
cd "$(dirname "$0")/editor-check"
command -v npm >/dev/null || { echo "editor-check needs Node.js and npm" >&2; exit 1; }
[ -x node_modules/.bin/yaml-language-server ] || npm install --silent --no-audit --no-fund
exec node check.js
