"""Check `ftlab workshop plan` against reality: run notebooks, measure the kernel's peak RSS, compare.

    python scripts/check_workshop_plan.py --profile ci --notebooks 00 01 02
    python scripts/check_workshop_plan.py --profile laptop --notebooks 00 01 --json runs/rss_laptop.json

Each notebook runs top to bottom in a fresh kernel (nbclient, FTLAB_SOLUTIONS=1, like CI). After every
cell the script reads the kernel's high-water mark (VmHWM in /proc/<pid>/status: the peak resident
memory so far), so the table also says in which cell the peak was reached. The plan's peak is the
estimator's prediction for the notebook's heaviest step plus the kernel's baseline
(``ftlab.workshop.plan``); the check passes when it is within the tolerance (default ±15 %) of the
measured peak. Exit status 1 if any notebook is outside it. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30


def vm_hwm(pid: int) -> int:
    """Peak resident bytes of process ``pid`` so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def measure(notebook: Path, profile: str, timeout: int = 1800, output_dir: str | None = None) -> dict:
    """Run ``notebook`` in a fresh kernel under ``profile``; return its peak RSS and where it happened."""
    import nbformat
    from nbclient import NotebookClient

    os.environ.update(FTLAB_PROFILE=profile, FTLAB_SOLUTIONS="1", PYTHONPATH=str(ROOT))
    nb = nbformat.read(notebook, as_version=4)
    marks: list[tuple[int, int]] = []
    start = time.time()
    # allow_errors: a cell that fails (reported in the row) must not hide the rest of the notebook's memory
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(notebook.parent)}})

    def after_cell(cell, cell_index, **_):
        marks.append((cell_index, vm_hwm(client.km.provisioner.process.pid)))
        if os.environ.get("CHECK_VERBOSE"):
            print(f"  {notebook.stem} cell {cell_index}: {marks[-1][1] / 2**20:.0f} MiB, {time.time() - start:.0f} s",
                  file=sys.stderr, flush=True)

    client.on_cell_executed = after_cell
    client.execute()
    if output_dir:  # the executed notebook, outputs included, to read its numbers afterwards
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, Path(output_dir) / notebook.name)
    peak = max(b for _, b in marks)
    first_at_peak = next(i for i, b in marks if b >= peak - 16 * 2**20)  # the cell that (nearly) set it
    errors = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
              and any(o.get("output_type") == "error" for o in cell.get("outputs", []))]
    return dict(notebook=notebook.stem, profile=profile, measured_bytes=peak, peak_cell=first_at_peak, error_cells=errors,
                after_setup_bytes=marks[0][1] if marks else 0, seconds=round(time.time() - start, 1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="ci", choices=["ci", "laptop", "gpu"])
    parser.add_argument("--notebooks", nargs="+", default=["00", "01", "02"], help="notebook numbers")
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--output-dir", help="also save the executed notebooks (with outputs) here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from ftlab.workshop import notebook_peaks

    planned = {row["notebook"]: row for row in notebook_peaks(args.profile, device="cpu")}
    rows, ok = [], True
    print(f"{'notebook':<26} {'plan':>9} {'measured':>9} {'error':>7}  plan's heaviest step / measured peak cell")
    for number in args.notebooks:
        path = next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))
        row = measure(path, args.profile, output_dir=args.output_dir)
        plan = planned[path.stem]
        row.update(plan_bytes=plan["peak_bytes"], heaviest_step=plan["heaviest_step"])
        row["error_pct"] = round(100 * (row["plan_bytes"] - row["measured_bytes"]) / row["measured_bytes"], 1)
        row["within"] = abs(row["error_pct"]) <= 100 * args.tolerance
        ok &= row["within"]
        rows.append(row)
        print(f"{path.stem:<26} {row['plan_bytes'] / GiB:>7.2f}Gi {row['measured_bytes'] / GiB:>7.2f}Gi "
              f"{row['error_pct']:>+6.1f}%  {plan['heaviest_step']} / cell {row['peak_cell']} "
              f"({row['seconds']:.0f} s)", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("all within" if ok else "OUTSIDE", f"±{100 * args.tolerance:.0f} %")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
