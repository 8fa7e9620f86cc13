"""Open a run's report.html in headless Chromium (Debian's `chromium`) and save a screenshot.

python benchmarks/report_screenshot.py RUN_DIR [--out benchmarks/results/report_screenshot.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def screenshot(run_dir: Path, out: Path, width: int = 1280, height: int = 2400) -> Path:
    from search.report import write_report

    page = write_report(run_dir).resolve()
    exe = (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )
    if exe is None:
        raise SystemExit(
            "report_screenshot.py: error: no chromium on PATH (apt-get install chromium)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--screenshot={out.resolve()}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "report_screenshot.png"))
    args = ap.parse_args()
    print(screenshot(Path(args.run_dir), Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
