"""``encseg ...``: parses arguments and calls one function each; no logic of its own.

Imports are local to each command so that ``encseg --help`` and light commands start fast.
"""

from __future__ import annotations

import argparse
import sys

from encseg.errors import EncsegError


def _encoders(a: argparse.Namespace) -> int:
    from encseg.models.zoo_table import print_encoder_table

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


PRECISION_CHOICES = ["32", "bf16-mixed", "16-mixed"]
PRECISION_HELP = ("numeric precision (default: the run's train.precision on this device: bf16 autocast on a GPU "
                  "under auto, fp32 on a CPU); 32 for a bit-exact fp32 check")


def _eval(a: argparse.Namespace) -> int:
    from encseg.engine.evaluate import evaluate_cli

    return evaluate_cli(a.run_dir, a.dataset, mode=a.mode, tta=a.tta, split=a.split, precision=a.precision)


def _predict(a: argparse.Namespace) -> int:
    from encseg.engine.predict import predict_cli

    return predict_cli(a.run_dir, a.images, out=a.out, mode=a.mode, precision=a.precision)


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


_LEAVES = "_encseg_leaves"  # attribute of the top parser: {("study", "run"): its parser, ...}


def _command(sub, leaves: dict, path: tuple[str, ...], fn, help: str, example: str,
             description: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` ends with a worked example."""
    s = sub.add_parser(path[-1], help=help, description=description or help,
                       epilog="example:\n  " + example.replace("\n", "\n  "),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.set_defaults(fn=fn)
    leaves[path] = s
    return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="encseg", description="How much does a pretrained encoder help segmentation?",
                                epilog="`encseg COMMAND --help` explains a command's arguments with an example.")
    leaves: dict[tuple[str, ...], argparse.ArgumentParser] = {}
    setattr(p, _LEAVES, leaves)
    sub = p.add_subparsers(dest="command", required=True)

    s = _command(sub, leaves, ("encoders",), _encoders, "list the encoder zoo", "encseg encoders --params")
    s.add_argument("--params", action="store_true", help="build each architecture to count parameters (slow)")

    s = _command(sub, leaves, ("inspect",), _inspect,
                 "write tap/pyramid shapes and PCA pictures of an encoder's features",
                 "encseg inspect --encoder random_vitb16 --weights none --out outputs/inspect")
    s.add_argument("--encoder", required=True, help="zoo name (see `encseg encoders`) or a timm ViT name")
    s.add_argument("--weights", default=None, help="local checkpoint, 'hub', or 'none'")
    s.add_argument("--image", default=None, help="image file (default: a synthetic scene)")
    s.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    s.add_argument("--timm-kwargs", default=None, help="YAML mapping passed to timm.create_model")
    s.add_argument("--out", required=True, help="directory for shapes.json and the PCA pictures")

    _add_data_commands(sub, leaves)
    _add_run_commands(sub, leaves)
    _add_study_commands(sub, leaves)

    s = _command(sub, leaves, ("demo",), _demo, "the whole pipeline on synthetic data, offline, on CPU",
                 "encseg demo --out outputs/demo")
    s.add_argument("--out", default="outputs/demo", help="output directory (default outputs/demo)")
    return p


def _add_data_commands(sub, leaves: dict) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    s = _command(data, leaves, ("data", "synth"), _data_synth, "write a synthetic dataset",
                 "encseg data synth --out data/synth_a --classes 5 --train 64 --val 16")
    s.add_argument("--out", required=True, help="directory to write (created)")
    s.add_argument("--style", default="a", help="scene style: a or b (a different domain)")
    s.add_argument("--classes", type=int, default=5, help="number of classes (default 5)")
    s.add_argument("--train", type=int, default=64, help="number of training images (default 64)")
    s.add_argument("--val", type=int, default=16, help="number of validation images (default 16)")
    s.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the scenes (default 0)")
    s.add_argument("--layout", default="folder", choices=["folder", "ade20k", "voc", "cityscapes"],
                   help="on-disk layout to write (default folder)")
    s.add_argument("--cue", default="shape_texture", choices=["shape_texture", "texture"],
                   help="what defines a class: shape and texture, or texture alone")
    s = _command(data, leaves, ("data", "check"), _data_check, "validate every image/mask pair of a dataset",
                 "encseg data check configs/datasets/synthetic_a.yaml --split val")
    s.add_argument("path", help="dataset config YAML or a folder-format directory")
    s.add_argument("--split", default=None, help="one split (default: every split the dataset has)")
    s.add_argument("--fast", action="store_true", help="existence and header sizes only")



def _add_run_commands(sub, leaves: dict) -> None:
    s = _command(sub, leaves, ("train",), _train, "train one run",
                 "encseg train configs/runs/smoke.yaml train.max_iters=50 --runs-root runs seed=1",
                 description="Train one run from a run config; key.path=value overrides and options may come\n"
                             "in any order. The run directory (under the runs root) keeps the full log in train.log.")
    s.add_argument("config", help="run config YAML (e.g. configs/runs/smoke.yaml)")
    s.add_argument("overrides", nargs="*", help="key.path=value, e.g. train.lr=1e-4 data.fraction=0.25")
    s.add_argument("--runs-root", default="runs", help="parent directory of run directories (default runs)")
    s.add_argument("--print-config", action="store_true", help="print the merged config and exit")

    s = _command(sub, leaves, ("eval",), _eval, "score a finished run on a dataset",
                 "encseg eval runs/synth_a__random_vitb16__finetune__f100__s0 "
                 "--dataset configs/datasets/synthetic_a.yaml --tta flip")
    s.add_argument("run_dir", help="a finished run directory")
    s.add_argument("--dataset", required=True, help="dataset config YAML")
    s.add_argument("--split", default=None, help="split to score (default: the dataset's val split)")
    s.add_argument("--mode", default=None, choices=["whole", "slide"], help="inference mode (default: the run's)")
    s.add_argument("--tta", default="", help="comma list: flip,ms")
    s.add_argument("--precision", default=None, choices=PRECISION_CHOICES, help=PRECISION_HELP)

    s = _command(sub, leaves, ("predict",), _predict, "write label PNGs, coloured masks and overlays",
                 "encseg predict runs/synth_a__random_vitb16__finetune__f100__s0 img1.png img2.png --out preds")
    s.add_argument("run_dir", help="a finished run directory")
    s.add_argument("images", nargs="+", help="image files")
    s.add_argument("--out", required=True, help="directory for the predictions")
    s.add_argument("--mode", default=None, choices=["whole", "slide"], help="inference mode (default: the run's)")
    s.add_argument("--precision", default=None, choices=PRECISION_CHOICES, help=PRECISION_HELP)



def _add_study_commands(sub, leaves: dict) -> None:
    study = sub.add_parser("study", help="grids of runs").add_subparsers(dest="study_command", required=True)
    s = _command(study, leaves, ("study", "plan"), _study_plan, "print the grid and its estimated cost",
                 "encseg study plan configs/studies/example_synthetic.yaml")
    s.add_argument("study", help="study YAML")
    s = _command(study, leaves, ("study", "run"), _study_run, "run every cell of a study",
                 "encseg study run configs/studies/example_synthetic.yaml --jobs 2",
                 description="Run every cell of a study once: finished cells are skipped, partial ones resume,\n"
                             "failed ones are retried. Each run directory keeps its full log in train.log.")
    s.add_argument("study", help="study YAML")
    s.add_argument("--launcher", default="local", choices=["local", "slurm", "submitit-local"],
                   help="where cells run (default local)")
    s.add_argument("--jobs", type=int, default=1, help="cells at a time (local: worker processes)")
    s.add_argument("--dry-run", action="store_true", help="list what would run; write nothing")
    s.add_argument("--out", default=None, help="study directory (default: from the study file)")
    s = _command(study, leaves, ("study", "report"), _study_report,
                 "aggregate, summarise, plot and write report.html",
                 "encseg study report outputs/example_synthetic")
    s.add_argument("study_dir", help="the study directory (holds runs/)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Like ``parse_args``, but a subcommand's options and positionals (overrides) may come in any order.

    argparse's intermixed parsing does not support subparsers, so the subcommand is looked up first and
    its own parser does the intermixed parse; anything else (no command, ``--help``) takes the plain path.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    leaves = getattr(top, _LEAVES)
    for depth in (2, 1):
        path = tuple(argv[:depth])
        if path in leaves:
            args = leaves[path].parse_intermixed_args(argv[depth:])
            for name, value in zip(("command", f"{path[0]}_command"), path, strict=False):
                setattr(args, name, value)
            return args
    return top.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except EncsegError as e:
        # user errors (bad config, missing file, unknown name) get one clear line; anything else is a bug and
        # keeps its traceback
        print(f"encseg: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

