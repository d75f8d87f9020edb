"""The Khronos glTF Validator (npm `gltf-validator`) run on a GLB, for tests and bench/bench_export.py.

It is installed on first use with `npm install --prefix` into CACHE (gitignored), pinned to VERSION,
and called through a small node script. `unavailable()` says why it cannot run (no node or npm, or
the install failed), so callers can skip with that reason.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

VERSION = "2.0.0-dev.3.10"
CACHE = Path(__file__).resolve().parents[1] / ".cache" / "gltf-validator"
PACKAGE = CACHE / "node_modules" / "gltf-validator"

# argv: GLB paths; prints one JSON report per file: {"uri", "errors", "codes": {code: count}}
SCRIPT = """
const fs = require("fs");
const validator = require("gltf-validator");
(async () => {
  for (const path of process.argv.slice(2)) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(path)), {uri: path, maxIssues: 0});
    const codes = {};
    for (const m of report.issues.messages) if (m.severity === 0) codes[m.code] = (codes[m.code] || 0) + 1;
    console.log(JSON.stringify({uri: path, errors: report.issues.numErrors, codes}));
  }
})().catch((e) => { console.error(e); process.exit(1); });
"""


def unavailable() -> str | None:
    """None when the validator can run, else why not (installing it first if need be)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node and npm are needed to run the Khronos glTF Validator (npm gltf-validator)"
    installed = PACKAGE / "package.json"
    if not installed.exists() or json.loads(installed.read_text()).get("version") != VERSION:
        CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund",
                               "--no-save", f"gltf-validator@{VERSION}"], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0 or not installed.exists():
            return f"npm install gltf-validator@{VERSION} failed: {done.stderr.strip()[-300:]}"
    (CACHE / "validate.js").write_text(SCRIPT)
    return None


def validate(*paths: Path) -> list[dict]:
    """One report per GLB: {"uri": path, "errors": count, "codes": {issue code: count}}."""
    why = unavailable()
    if why:
        raise RuntimeError(why)
    done = subprocess.run(["node", str(CACHE / "validate.js"), *map(str, paths)], capture_output=True,
                          text=True, cwd=CACHE, timeout=600, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
