"""`polydiff` command line: train, sample, evaluate, demo, show.

    polydiff train experiment=toy/gmm trainer.max_steps=500           # hydra overrides
    polydiff train data=image_folder data.root=my_images              # your own images
    polydiff sample run=runs/toy/gmm/<stamp>-<hash> sampler=dpmpp_2m steps=20 n=1000
    polydiff sample run=latest sampler=euler_ancestral sampler.eta=0.5 ~sampler.s_noise
    polydiff evaluate run=latest:toy/gmm n=2000 steps=32
    polydiff edit run=<dir> edit=sdedit edit.strength=0.5             # modality commands,
    polydiff edit run=<dir> edit=inpaint                               # any image run;
    polydiff adapt run=<dir> adapt=textual_inversion                   # configs/edit, adapt
    polydiff demo [--only toy] [--quick] [--out demo_out]
    polydiff show experiment=toy/gmm                                   # print the composed config
    polydiff show run=<dir>                                            # what a run holds

Shorthands (sample/evaluate/modality commands): ``steps=`` -> ``sampler.steps=``, ``n=`` ->
``sample.n=`` / ``evaluate.n=``, ``seed=``, ``ema=`` (auto, the default: the raw or EMA weights
best by the modality's metric, chosen after training; true: the first EMA; false: raw weights;
a decay such as 0.999; sigma_rel:<x>: a post-hoc power EMA),
``out=`` (output path), ``overwrite=true`` (replace an existing output). ``run=latest`` is the
newest run under ``runs_root`` (``run=latest:<experiment name>`` within one experiment).
Every sampler of ``polydiff.core.samplers.SAMPLERS`` is a ``sampler=<name>`` choice with its
options as plain keys. Settings that cannot change after training (``data.*``, ``model.*``,
``objective.*``, ``trainer.*``) are refused at sample time, not ignored.
Configs come from ``$POLYDIFF_CONFIGS`` or the ``configs/`` of the enclosing repository.
Multi-process training: ``torchrun --nproc_per_node 2 -m polydiff_apps.cli train ...`` or
``accelerate launch -m polydiff_apps.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from importlib.metadata import entry_points
from pathlib import Path

DEMO_GROUP = "polydiff.demos"
# modality subcommands: ``name = "module:function"`` with
# ``function(run_dir, overrides, out=None) -> dict`` (e.g. image's ``edit`` and ``adapt``)
COMMAND_GROUP = "polydiff.commands"
BUILTIN = ("train", "sample", "evaluate", "show", "demo")


def _split(items: list[str], command: str) -> tuple[dict[str, str], list[str]]:
    """Separate CLI shorthands (run=, out=, steps=, n=, seed=, ema=, overwrite=) from hydra
    overrides (``key=value``, ``+key=value``, ``~key``)."""
    special: dict[str, str] = {}
    overrides: list[str] = []
    block = "evaluate" if command == "evaluate" else "sample"
    for item in items:
        key, eq, value = item.partition("=")
        if not eq and not key.startswith("~"):
            raise SystemExit(f"polydiff {command}: expected key=value or ~key, got {item!r}")
        if key in ("run", "out"):
            special[key] = value
        elif key == "steps":
            overrides.append(f"sampler.steps={value}")
        elif key in ("n", "seed", "overwrite"):
            overrides.append(f"{block}.{key}={value}")
        elif key == "ema":
            overrides.append(f"sample.ema={value}")
        else:
            overrides.append(item)
    return special, overrides


def cmd_train(args: argparse.Namespace) -> int:
    from polydiff.train.run import train

    run_dir = train(args.overrides)
    if os.environ.get("RANK", "0") == "0":  # torchrun / accelerate launch: main process only
        print(f"polydiff: trained; run directory {run_dir}")
    return 0


def _need_run(special: dict[str, str], command: str, overrides: list[str] | None = None) -> Path:
    """The run directory of ``run=`` (a path, ``latest`` or ``latest:<experiment name>``)."""
    from polydiff.train.run import find_run

    if "run" not in special:
        raise SystemExit(f"polydiff {command}: run=<run directory> is required")
    root = next((o.split("=", 1)[1] for o in overrides or () if o.startswith("runs_root=")), None)
    run = find_run(special["run"], root)
    if special["run"].startswith("latest"):
        print(f"polydiff {command}: run={special['run']} -> {run}", file=sys.stderr)
    return run


def _without_runs_root(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.startswith("runs_root=")]


def cmd_sample(args: argparse.Namespace) -> int:
    from polydiff.train.run import sample_run

    special, overrides = _split(args.overrides, "sample")
    run = _need_run(special, "sample", overrides)
    out = sample_run(run, _without_runs_root(overrides), out=special.get("out"))
    info = json.loads((out / "sample.json").read_text())
    print(
        f"polydiff: {info['n']} samples ({info['sampler']}, {info['steps']} steps, "
        f"{info['weights']}, seed {info['seed']}) -> {out} {info['files']}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from polydiff.train.run import evaluate_run

    special, overrides = _split(args.overrides, "evaluate")
    run = _need_run(special, "evaluate", overrides)
    result = evaluate_run(run, _without_runs_root(overrides), out=special.get("out"))
    for key in ("reference", "features"):
        if key in result:
            print(f"polydiff: {key}: {json.dumps(result[key])}")
    print(json.dumps(result["metrics"], indent=1))
    print(f"polydiff: metrics -> {result['path']}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``show <overrides>``: the composed config; ``show run=<dir>``: what a run holds."""
    from omegaconf import OmegaConf

    from polydiff.train.config import compose
    from polydiff.train.run import describe_run

    runs = [o for o in args.overrides if o.startswith("run=")]
    if runs:
        rest = [o for o in args.overrides if not o.startswith("run=")]
        special = {"run": runs[-1].split("=", 1)[1]}
        if _without_runs_root(rest):
            raise SystemExit(f"polydiff show run=...: unexpected arguments {rest}")
        info = describe_run(_need_run(special, "show", rest))
        print(OmegaConf.to_yaml(OmegaConf.create(info)))
        return 0
    print(OmegaConf.to_yaml(compose(args.overrides)))
    return 0


def discover_demos() -> dict[str, object]:
    """Demos of every installed modality (entry-point group ``polydiff.demos``)."""
    return {ep.name: ep for ep in sorted(entry_points(group=DEMO_GROUP), key=lambda e: e.name)}


def cmd_demo(args: argparse.Namespace) -> int:
    demos = discover_demos()
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - set(demos))
        if unknown:
            raise SystemExit(
                f"polydiff demo: unknown demo(s) {unknown}; installed: {sorted(demos)}"
            )
        demos = {k: v for k, v in demos.items() if k in wanted}
    out_root = Path(args.out)
    out_root.mkdir(parents=True, exist_ok=True)
    results, failed = {}, []
    for name, ep in demos.items():
        print(f"polydiff demo: {name} ...", flush=True)
        previous = out_root / name
        if previous.exists():  # a demo's outputs are never overwritten: the last run is kept aside
            kept = out_root / f"{name}.previous"
            shutil.rmtree(kept, ignore_errors=True)
            previous.rename(kept)
            print(f"polydiff demo: the previous {previous} is now {kept}", flush=True)
        t0 = time.perf_counter()
        try:
            res = ep.load()(out_root / name, quick=args.quick)
            results[name] = {
                "ok": True,
                "seconds": round(time.perf_counter() - t0, 2),
                **(res or {}),
            }
            print(
                f"polydiff demo: {name} done in {results[name]['seconds']} s -> {out_root / name}"
            )
        except Exception as err:  # keep going: one broken modality must not hide the others
            traceback.print_exc()
            failed.append(name)
            results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    (out_root / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    print(
        f"polydiff demo: {len(results) - len(failed)}/{len(results)} ok; summary in "
        f"{out_root / 'summary.json'}"
    )
    return 1 if failed else 0


def discover_commands() -> dict[str, object]:
    """Subcommands installed by modality packages (entry-point group ``polydiff.commands``)."""
    eps = sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name)
    return {ep.name: ep for ep in eps if ep.name not in BUILTIN}


def cmd_modality(args: argparse.Namespace) -> int:
    special, overrides = _split(args.overrides, args.command)
    fn = args.entry_point.load()
    run = _need_run(special, args.command, overrides)
    result = fn(run, _without_runs_root(overrides), out=special.get("out"))
    print(json.dumps(result, indent=1, default=str))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polydiff",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n", 2)[2],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (
        ("train", cmd_train, "train a model: polydiff train experiment=toy/gmm [overrides]"),
        ("sample", cmd_sample, "sample a run: polydiff sample run=<dir> [sampler=..] [steps=..]"),
        ("evaluate", cmd_evaluate, "metrics of a run: polydiff evaluate run=<dir> [n=..]"),
        ("show", cmd_show, "the composed config (show experiment=..) or a run (show run=<dir>)"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("overrides", nargs="*", help="hydra overrides key=value")
        p.set_defaults(fn=fn)
    for name, ep in discover_commands().items():
        p = sub.add_parser(name, help=f"{ep.value}: polydiff {name} run=<dir> [overrides]")
        p.add_argument("overrides", nargs="*", help="run=<dir>, out=<dir>, hydra overrides")
        p.set_defaults(fn=cmd_modality, entry_point=ep)
    p = sub.add_parser("demo", help="run every installed modality's demo")
    p.add_argument("--only", default="", help="comma-separated demo names (e.g. toy)")
    p.add_argument("--quick", action="store_true", help="shortest version of every demo")
    p.add_argument("--out", default="demo_out", help="output directory (default demo_out/)")
    p.set_defaults(fn=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``polydiff`` console script."""
    from polydiff.train.checkpoint import CheckpointError
    from polydiff.train.config import ConfigError
    from polydiff.train.trainer import NonFiniteLossError

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return args.fn(args)
    except ConfigError as err:
        print(f"polydiff {args.command}: config error: {err}", file=sys.stderr)
        return 2
    except (CheckpointError, NonFiniteLossError) as err:
        print(f"polydiff {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
