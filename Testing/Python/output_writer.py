"""A second process writing through ``AtomicOutputDir``, for tests of concurrent and killed writers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Prints its staging folder, then waits for the ``go`` file to appear (or to be killed) before it publishes, and
# prints what happened.
WRITER = """
import sys, time
from pathlib import Path
from medsyn.errors import MedSynError
from medsyn.io.outputs import AtomicOutputDir
out, go = Path(sys.argv[1]), Path(sys.argv[2])
try:
    with AtomicOutputDir(out) as staging:
        (staging / "first.txt").write_text("first writer")
        print(staging, flush=True)
        while not go.exists():
            time.sleep(0.05)
    print("published", flush=True)
except MedSynError as error:
    print(error, flush=True)
"""


def start_writer(out: Path, go: Path) -> tuple[subprocess.Popen, Path]:
    """The running writer and its staging folder, once that exists."""
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(go)], stdout=subprocess.PIPE, text=True)
    return writer, Path(writer.stdout.readline().strip())


def killed_writer_staging(out: Path) -> Path:
    """The staging folder that a writer killed mid-write leaves next to ``out``."""
    writer, staging = start_writer(out, out.with_name(out.name + ".never"))
    writer.kill()
    writer.communicate(timeout=60)
    return staging
