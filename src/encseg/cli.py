"""``encseg ...``: parses arguments and calls one function each; no logic of its own.

Imports are local to each command so that ``encseg --help`` and light commands start fast.
"""

from __future__ import annotations

import argparse
import sys

from encseg.errors import EncsegError


def _encoders(a: argparse.Namespace) -> int:
    from encseg.models.encoders import print_encoder_table

    print_encoder_table(params=a.params)
    return 0


def _inspect(a: argparse.Namespace) -> int:
    from encseg.models.inspect import inspect_encoder

    inspect_encoder(a.encoder, weights=a.weights, image=a.image, out=a.out, size=a.size,
                    timm_kwargs=a.timm_kwargs)
    return 0


def _data_synth(a: argparse.Namespace) -> int:
    from encseg.data.synthetic import write_synthetic

    write_synthetic(a.out, style=a.style, classes=a.classes, train=a.train, val=a.val, size=a.size,
                    seed=a.seed, layout=a.layout, cue=a.cue)
    print(f"wrote {a.layout} dataset to {a.out}")
    return 0


def _data_check(a: argparse.Namespace) -> int:
    from encseg.data.check import run_check_cli

    return run_check_cli(a.path, split=a.split, fast=a.fast)


def _train(a: argparse.Namespace) -> int:
    from encseg.engine.train import train_cli

    return train_cli(a.config, a.overrides, runs_root=a.runs_root, print_config=a.print_config)


def _eval(a: argparse.Namespace) -> int:
    from encseg.engine.evaluate import evaluate_cli

    return evaluate_cli(a.run_dir, a.dataset, mode=a.mode, tta=a.tta, split=a.split)


def _predict(a: argparse.Namespace) -> int:
    from encseg.engine.predict import predict_cli

    return predict_cli(a.run_dir, a.images, out=a.out, mode=a.mode)


def _study_plan(a: argparse.Namespace) -> int:
    from encseg.study.plan import plan_cli

    return plan_cli(a.study)


def _study_run(a: argparse.Namespace) -> int:
    from encseg.study.launch import run_cli

    return run_cli(a.study, launcher=a.launcher, jobs=a.jobs, dry_run=a.dry_run, out=a.out)


def _study_report(a: argparse.Namespace) -> int:
    from encseg.study.report import report_cli

    return report_cli(a.study_dir)


def _demo(a: argparse.Namespace) -> int:
    from encseg.study.demo import run_demo

    return run_demo(a.out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="encseg", description="How much does a pretrained encoder help segmentation?")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("encoders", help="list the encoder zoo")
    s.add_argument("--params", action="store_true", help="build each architecture to count parameters (slow)")
    s.set_defaults(fn=_encoders)

    s = sub.add_parser("inspect", help="write tap/pyramid shapes and PCA pictures of an encoder's features")
    s.add_argument("--encoder", required=True)
    s.add_argument("--weights", default=None, help="local checkpoint, 'hub', or 'none'")
    s.add_argument("--image", default=None, help="image file (default: a synthetic scene)")
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--timm-kwargs", default=None, help="YAML mapping passed to timm.create_model")
    s.add_argument("--out", required=True)
    s.set_defaults(fn=_inspect)

    _add_data_commands(sub)
    _add_run_commands(sub)
    _add_study_commands(sub)

    s = sub.add_parser("demo", help="the whole pipeline on synthetic data, offline, on CPU")
    s.add_argument("--out", default="outputs/demo")
    s.set_defaults(fn=_demo)
    return p


def _add_data_commands(sub) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="write a synthetic dataset")
    s.add_argument("--out", required=True)
    s.add_argument("--style", default="a")
    s.add_argument("--classes", type=int, default=5)
    s.add_argument("--train", type=int, default=64)
    s.add_argument("--val", type=int, default=16)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--layout", default="folder", choices=["folder", "ade20k", "voc", "cityscapes"])
    s.add_argument("--cue", default="shape_texture", choices=["shape_texture", "texture"],
                   help="what defines a class: shape and texture, or texture alone")
    s.set_defaults(fn=_data_synth)
    s = data.add_parser("check", help="validate every image/mask pair of a dataset")
    s.add_argument("path", help="dataset config YAML or a folder-format directory")
    s.add_argument("--split", default=None)
    s.add_argument("--fast", action="store_true", help="existence and header sizes only")
    s.set_defaults(fn=_data_check)


def _add_run_commands(sub) -> None:
    s = sub.add_parser("train", help="train one run")
    s.add_argument("config")
    s.add_argument("overrides", nargs="*", help="key.path=value")
    s.add_argument("--runs-root", default="runs")
    s.add_argument("--print-config", action="store_true")
    s.set_defaults(fn=_train)

    s = sub.add_parser("eval", help="score a finished run on a dataset")
    s.add_argument("run_dir")
    s.add_argument("--dataset", required=True, help="dataset config YAML")
    s.add_argument("--split", default=None)
    s.add_argument("--mode", default=None, choices=["whole", "slide"])
    s.add_argument("--tta", default="", help="comma list: flip,ms")
    s.set_defaults(fn=_eval)

    s = sub.add_parser("predict", help="write label PNGs, coloured masks and overlays")
    s.add_argument("run_dir")
    s.add_argument("images", nargs="+")
    s.add_argument("--out", required=True)
    s.add_argument("--mode", default=None, choices=["whole", "slide"])
    s.set_defaults(fn=_predict)


def _add_study_commands(sub) -> None:
    study = sub.add_parser("study", help="grids of runs").add_subparsers(dest="study_command", required=True)
    s = study.add_parser("plan", help="print the grid and its estimated cost")
    s.add_argument("study")
    s.set_defaults(fn=_study_plan)
    s = study.add_parser("run", help="run every cell of a study")
    s.add_argument("study")
    s.add_argument("--launcher", default="local", choices=["local", "slurm", "submitit-local"])
    s.add_argument("--jobs", type=int, default=1)
    s.add_argument("--dry-run", action="store_true")
    s.add_argument("--out", default=None, help="study directory (default: from the study file)")
    s.set_defaults(fn=_study_run)
    s = study.add_parser("report", help="aggregate, summarise, plot and write report.html")
    s.add_argument("study_dir")
    s.set_defaults(fn=_study_report)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except EncsegError as e:
        # user errors (bad config, missing file, unknown name) get one clear line; anything else is a bug and
        # keeps its traceback
        print(f"encseg: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

