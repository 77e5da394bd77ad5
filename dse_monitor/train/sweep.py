"""``dse-monitor sweep``: a grid of ``dse-monitor fit`` runs over values and seeds, one after
another, into one log root (``sweep.json`` records each run's command and exit status)."""
from __future__ import annotations

import itertools
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_sweep_arguments", "parse_grid", "plan_sweep", "run_sweep"]


def parse_grid(specs: Sequence[str]) -> dict[str, list[str]]:
    """``["model.init_std=0.01,0.1"]`` -> ``{"model.init_std": ["0.01", "0.1"]}``.

    Example:
        >>> parse_grid(["model.init_std=0.01,0.1", "data.label_noise=none,permute"])
        {'model.init_std': ['0.01', '0.1'], 'data.label_noise': ['none', 'permute']}
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lstrip("-")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise ValueError(f"--grid wants KEY=V1,V2,... (e.g. model.init_std=0.01,0.1), got {spec!r}")
        if key in grid:
            raise ValueError(f"--grid names {key!r} twice")
        grid[key] = vals
    return grid


def _short(key: str, keys: Sequence[str]) -> str:
    tail = key.rsplit(".", 1)[-1]
    return tail if sum(k.rsplit(".", 1)[-1] == tail for k in keys) == 1 else key


def plan_sweep(grid: dict[str, list[str]], seeds: Sequence[int]) -> list[tuple[str, dict[str, str], int]]:
    """Every grid point times every seed: ``(run name, {key: value}, seed)``, in order.

    Example:
        >>> [name for name, _, _ in plan_sweep({"model.init_std": ["0.01", "0.1"]}, [1, 2])]
        ['init_std=0.01_seed=1', 'init_std=0.01_seed=2', 'init_std=0.1_seed=1', 'init_std=0.1_seed=2']
    """
    keys = list(grid)
    plan = []
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        for seed in seeds:
            name = "_".join([f"{_short(k, keys)}={v}" for k, v in point.items()] + [f"seed={seed}"])
            plan.append((name.replace("/", "-"), point, seed))
    return plan


def add_sweep_arguments(parser: Any) -> None:
    """The options of ``dse-monitor sweep`` (the other ``--key value`` arguments go to every run)."""
    parser.add_argument("--config", action="append", required=True, help="config file(s) for every run")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="a hyperparameter and its values (repeatable; the grid is their product)")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds (seed_everything), default 1")
    parser.add_argument("--root", default=None, help="log root (default runs/sweep_<config name>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")


def run_sweep(args: Any, extra: Sequence[str], parser: Any) -> int:
    """Run the grid of ``args`` (parsed by :func:`add_sweep_arguments`) with ``extra`` passed to every run."""
    try:
        grid = parse_grid(args.grid)
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError as err:
        parser.error(str(err))
    if not seeds:
        parser.error("--seeds needs at least one seed")
    root = Path(args.root or f"runs/sweep_{Path(args.config[0]).stem}")
    plan = plan_sweep(grid, seeds)
    root.mkdir(parents=True, exist_ok=True)
    print(f"dse-monitor sweep: {len(plan)} runs into {root}  (view: tensorboard --logdir {root})")
    results = []
    for i, (name, point, seed) in enumerate(plan, 1):
        cmd = [sys.executable, "-m", "dse_monitor.train.cli", "fit"]
        for c in args.config:
            cmd += ["--config", c]
        for k, v in point.items():
            cmd += [f"--{k}", v]
        cmd += ["--seed_everything", str(seed), "--trainer.default_root_dir", str(root / name)]
        cmd += list(extra)
        shown = ["dse-monitor", *cmd[3:]]  # what to type to rerun this one run by hand
        print(f"\n[sweep {i}/{len(plan)}] {name}\n  $ {shlex.join(shown)}", flush=True)
        if args.dry_run:
            continue
        start = time.perf_counter()
        try:
            rc = subprocess.call(cmd)
        except KeyboardInterrupt:
            print("sweep interrupted", file=sys.stderr)
            rc = 130
        seconds = time.perf_counter() - start
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"[sweep {i}/{len(plan)}] {name}: {status} in {seconds:.0f} s", flush=True)
        results.append({"name": name, "values": point, "seed": seed, "returncode": rc,
                        "seconds": round(seconds, 1), "command": shown})
        with open(root / "sweep.json", "w") as f:
            json.dump({"configs": args.config, "grid": grid, "seeds": seeds, "extra": extra, "runs": results}, f,
                      indent=1)
        if rc == 130:
            break
    if args.dry_run:
        return 0
    failed = [r["name"] for r in results if r["returncode"] != 0]
    print(f"\ndse-monitor sweep: {len(results) - len(failed)} of {len(plan)} runs finished in {root}")
    if failed:
        print("failed runs: " + ", ".join(failed))
    group = next(iter(grid), None)
    if group:
        print(f"compare them: dse-monitor compare {root} --metric dse,dsmi_y,dsmi_x --group-by {group}")
    return 1 if failed else 0
