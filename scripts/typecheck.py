"""The type checker at its baseline: run basedpyright (configured in pyproject.toml) and fail when
it finds more errors than scripts/typecheck_baseline.txt records, or when a `voxtox` import does
not resolve (the editable install is not the strict link tree, or a new module is not linked yet:
run `bash scripts/setup.sh` again). Fewer errors than the baseline pass, with a note to lower it.

    .venv/bin/python scripts/typecheck.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "scripts" / "typecheck_baseline.txt"


def run_checker() -> list[dict]:
    checker = Path(sys.executable).with_name("basedpyright")
    done = subprocess.run([str(checker), "--outputjson"], cwd=ROOT, capture_output=True, text=True)
    try:
        return json.loads(done.stdout)["generalDiagnostics"]
    except (json.JSONDecodeError, KeyError):
        sys.exit(f"basedpyright gave no report (exit {done.returncode}): {done.stderr.strip() or done.stdout[:500]}")


def where(diagnostic: dict) -> str:
    return f"{Path(diagnostic['file']).relative_to(ROOT)}:{diagnostic['range']['start']['line'] + 1}"


def main() -> int:
    errors = [d for d in run_checker() if d["severity"] == "error"]
    unresolved = [d for d in errors if d.get("rule") == "reportMissingImports" and "voxtox" in d["message"]]
    if unresolved:
        print("\n".join(f"{where(d)}: {d['message']}" for d in unresolved))
        print("voxtox imports do not resolve: run `bash scripts/setup.sh` (strict editable install) again")
        return 1
    baseline = int(BASELINE.read_text().split()[0])
    per_file = Counter(where(d).split(":")[0] for d in errors)
    if len(errors) > baseline:
        print("\n".join(f"{where(d)}: {d['message'].splitlines()[0]} ({d.get('rule')})" for d in errors))
        print(f"type errors: {len(errors)}, more than the baseline {baseline} ({BASELINE.name}); per file:")
        print("\n".join(f"  {n:4d} {f}" for f, n in per_file.most_common()))
        return 1
    note = f"; lower {BASELINE.relative_to(ROOT)} to {len(errors)}" if len(errors) < baseline else ""
    print(f"type errors: {len(errors)} (baseline {baseline}){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
