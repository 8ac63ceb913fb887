#!/usr/bin/env bash
# Proves what an editor shows for calico/v1 YAML: runs the real yaml-language-server
# (from the npm registry, pinned in scripts/editor-check/package.json) over examples/
# (no errors expected) and over a multi-document file with one error per document (each
# must be reported, so the per-document modeline and the schema's rules reach editors).
# Needs Node.js and npm (installs Debian's when absent). scripts/test.sh runs it last.
set -euo pipefail
cd "$(dirname "$0")/editor-check"
if ! command -v npm >/dev/null; then
    # This machine's kind ships Node.js; elsewhere take Debian's.
    echo "editor-check: installing Debian packages nodejs npm" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
[ -x node_modules/.bin/yaml-language-server ] || npm ci --silent --no-audit --no-fund
exec node check.js
