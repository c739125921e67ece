#!/usr/bin/env bash
# Look at the derivation page as a reader will: render it, screenshot it in headless Chromium, open the PNG.
#   bash docs/render_check.sh [SPEC] [OUT_DIR]      (Debian: apt-get install chromium)
# tests/test_first_hour.py::test_html_page_renders_in_a_browser runs the same check when Chromium is installed.
set -euo pipefail
spec="${1:-specs/vae.yaml}"
out="${2:-/tmp/symgrad_render}"
mkdir -p "$out"
name="$(basename "$spec" .yaml)"
symgrad derive "$spec" --render "$out/$name.html" > /dev/null
browser="$(command -v chromium || command -v chromium-browser)"
"$browser" --headless --no-sandbox --disable-gpu --window-size=1000,1800 \
    --screenshot="$out/$name.screenshot.png" "file://$(realpath "$out/$name.html")" 2> /dev/null
echo "page: $out/$name.html"
echo "screenshot: $out/$name.screenshot.png"
