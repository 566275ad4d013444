"""Run every workflow once with the bundled demo model on a held-out phantom and copy the previews to docs/images/.

    python scripts/demo_workflows.py [WORK_DIR]

The images in the README come from this script (the Slicer panel itself cannot run on our build machines).
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import numpy as np

from medsyn import api
from medsyn.io.volumes import read_volume, write_volume
from medsyn.phantom.cli import run_phantom

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"


def main(work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    run_phantom(1, 424242, 128, None, work / "phantom")  # a seed outside the training set's range
    case = work / "phantom" / "case_0000"
    ct, grid = read_volume(case / "ct.nii.gz")
    # Inpainting mask: a 60 mm ball at the right lung base, where an effusion collects.
    z, y, x = np.indices(ct.shape)
    centre = (ct.shape[0] * 0.3, ct.shape[1] * 0.35, ct.shape[2] * 0.3)
    radius_vox = 30.0 / np.array(grid.spacing_xyz[::-1])
    ball = (((z - centre[0]) / radius_vox[0]) ** 2 + ((y - centre[1]) / radius_vox[1]) ** 2
            + ((x - centre[2]) / radius_vox[2]) ** 2) <= 1
    write_volume(work / "inpaint_mask.nii.gz", ball.astype(np.uint8), grid)
    # Outpainting input: the phantom with its upper 40 mm removed.
    keep = int(round(ct.shape[0] - 40 / grid.spacing_xyz[2]))
    write_volume(work / "cropped_ct.nii.gz", ct[:keep], grid.with_shape((keep, *ct.shape[1:])))

    loaded = api.load_model()
    runs = {
        "generate": lambda out: api.generate("Large right pleural effusion. Heart size is normal.", out,
                                             loaded=loaded, seed=1),
        "anatomy": lambda out: api.generate_conditioned("No pleural effusion.", out, lobes=case / "lobes.nii.gz",
                                                        airway=case / "airway.nii.gz", loaded=loaded, seed=1),
        "inpaint": lambda out: api.inpaint(case / "ct.nii.gz", work / "inpaint_mask.nii.gz", out,
                                           report="Large right pleural effusion.", loaded=loaded, seed=1),
        "outpaint": lambda out: api.outpaint(work / "cropped_ct.nii.gz", out, canvas_path=case / "ct.nii.gz",
                                             report="Normal chest CT.", loaded=loaded, seed=1),
        "segment": lambda out: api.segment(case / "ct.nii.gz", out, loaded=loaded, seed=1),
    }
    IMAGES.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        start = time.perf_counter()
        paths = run(work / name)
        shutil.copyfile(paths["preview"], IMAGES / f"workflow_{name}.png")
        print(f"{name}: {time.perf_counter() - start:.1f} s -> docs/images/workflow_{name}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/workflows"))
