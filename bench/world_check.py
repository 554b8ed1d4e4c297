"""Benchmark: `igmu world check` wall time and accuracies on this machine.

Usage: python bench/world_check.py [--json]
"""

import argparse
import json
import platform
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "igmu.cli", "world", "check", "--json"],
                            capture_output=True, text=True)
    report = {"wall_seconds": round(time.time() - started, 1), "exit_code": result.returncode,
              "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
              "report": json.loads(result.stdout) if result.stdout.strip() else None,
              "stderr": result.stderr.strip().splitlines()[-1:] if result.returncode else []}
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
