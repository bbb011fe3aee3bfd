"""The ``skelact`` command. Each subcommand imports its module lazily so ``skelact --help`` is instant."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import SkelactError


def _print_prepare_summary(summary: dict) -> None:
    skipped = summary.get("skipped", [])
    print(f"wrote {summary['num_samples']} clips to {summary['out']}"
          + (f"; skipped {len(skipped)}:" if skipped else "; skipped none"))
    for item in skipped[:20]:
        print(f"  {item['name']}: {item['reason']}")
    if len(skipped) > 20:
        print(f"  ... and {len(skipped) - 20} more (see 'skelact info {summary['out']} --json')")
    for name, counts in summary.get("splits", {}).items():
        print(f"  split {name}: train {counts['train']}, test {counts['test']}")


def cmd_prepare(args) -> None:
    common = dict(out=args.out, strict=args.strict, dtype=args.dtype, overwrite=args.overwrite)
    if args.dataset == "synthetic":
        from .data.synthetic import prepare_synthetic
        summary = prepare_synthetic(seed=args.seed, num_samples=args.num_samples, **common)
    else:
        if not args.raw:
            raise SkelactError(f"prepare {args.dataset}: --raw DIR is required")
        if args.dataset == "ucla":
            from .data.ucla import prepare_ucla
            summary = prepare_ucla(args.raw[0], **common)
        else:
            from .data.ntu import prepare_ntu
            summary = prepare_ntu(args.dataset, args.raw, workers=args.workers, **common)
    _print_prepare_summary(summary)


def cmd_info(args) -> None:
    from .data.store import SkeletonStore
    s = SkeletonStore(args.dir).summary()
    if args.json:
        print(json.dumps(s))
        return
    print(f"{s['path']}: {s['dataset']}, {s['num_samples']} clips, {s['num_classes']} classes, "
          f"layout {s['layout']}, {s['dtype']}, up to {s['max_persons']} persons, "
          f"frames {s['frames']['min']}-{s['frames']['max']} (mean {s['frames']['mean']})")
    for name, c in s["splits"].items():
        print(f"  split {name}: train {c['train']}, test {c['test']}")
    print(f"  skipped inputs: {len(s['skipped'])}")
    for item in s["skipped"][:20]:
        print(f"    {item['name']}: {item['reason']}")


def cmd_import(args) -> None:
    from .data import importers
    common = dict(out=args.out, strict=args.strict, dtype=args.dtype, overwrite=args.overwrite)
    if args.format == "arrays":
        summary = importers.import_arrays(args.source, layout=args.layout, labels=args.labels,
                                          class_names=args.class_names, **common)
    else:
        summary = importers.import_pyskl(args.source, trust_pickle=args.trust_pickle,
                                         layout=args.layout, class_names=args.class_names, **common)
    _print_prepare_summary(summary)


def cmd_models(args) -> None:
    from .models.registry import list_models, create_model
    print(f"{'model':<16}{'params (ntu25, 60 classes, 2 persons)':>40}")
    for name in list_models():
        model = create_model(name, layout="ntu25", num_classes=60, num_persons=2)
        print(f"{name:<16}{sum(p.numel() for p in model.parameters()):>40,}")


def cmd_train(args) -> None:
    from .engine.train import main as train_main
    train_main(args)


def cmd_evaluate(args) -> None:
    from .engine.evaluate import evaluate_command
    evaluate_command(args)


def cmd_ensemble(args) -> None:
    from .ensemble import ensemble_command
    ensemble_command(args)


def cmd_compare(args) -> None:
    from .compare import compare_command
    compare_command(args)


def cmd_summarize(args) -> None:
    from .compare import summarize_command
    summarize_command(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skelact", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def store_options(sp):
        sp.add_argument("--out", required=True, help="dataset directory to create")
        sp.add_argument("--strict", action="store_true", help="fail on the first bad input")
        sp.add_argument("--dtype", default="float32", choices=["float32", "float16"])
        sp.add_argument("--overwrite", action="store_true", help="replace an existing dataset")

    sp = sub.add_parser("prepare", help="convert a raw dataset into a skelact dataset store")
    sp.add_argument("dataset", choices=["ucla", "ntu60", "ntu120", "synthetic"])
    sp.add_argument("--raw", action="append", help="raw data directory (repeat for NTU parts)")
    sp.add_argument("--workers", type=int, default=None, help="parser processes (default: all cores)")
    sp.add_argument("--seed", type=int, default=0, help="synthetic: generator seed")
    sp.add_argument("--num-samples", type=int, default=None, help="synthetic: number of clips")
    store_options(sp)
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("info", help="describe a dataset store")
    sp.add_argument("dir")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("import", help="import your own data (per-clip arrays or a pyskl pickle)")
    sp.add_argument("format", choices=["arrays", "pyskl"])
    sp.add_argument("source", help="folder or .npz file of arrays, or a pyskl .pkl")
    sp.add_argument("--layout", default=None, help="skeleton layout (ntu25, ucla20, coco17, openpose18)")
    sp.add_argument("--labels", default=None, help="arrays: CSV with name,label[,subject,view,split]")
    sp.add_argument("--class-names", default=None, help="text file, one class name per line")
    sp.add_argument("--trust-pickle", action="store_true",
                    help="pyskl: allow loading a pickle (it can run code; only for files you trust)")
    store_options(sp)
    sp.set_defaults(func=cmd_import)

    sp = sub.add_parser("models", help="list registered models with parameter counts")
    sp.set_defaults(func=cmd_models)

    sp = sub.add_parser("train", help="train a recogniser (no arguments: the built-in default job)")
    sp.add_argument("--config", action="append", default=None,
                    help="YAML config (repeatable: later files override earlier ones; "
                         "default: the built-in synthetic job)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set data.stream=b")
    sp.add_argument("--epochs", type=int, default=None)
    sp.add_argument("--out", default=None, help="run directory")
    sp.add_argument("--device", default=None, choices=["cpu", "cuda"])
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run")
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("evaluate", help="evaluate a run or checkpoint and write a report")
    sp.add_argument("target", help="run directory or checkpoint file")
    sp.add_argument("--data", default=None, help="dataset directory (default: the run's)")
    sp.add_argument("--split", default=None, help="split protocol (default: the run's)")
    sp.add_argument("--device", default=None, choices=["cpu", "cuda"])
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("ensemble", help="fuse per-stream scores of several runs, aligned by sample id")
    sp.add_argument("runs", nargs="+")
    sp.add_argument("--weights", type=float, nargs="+", default=None)
    sp.add_argument("--search", action="store_true",
                    help="search the weights on the runs' validation scores")
    sp.add_argument("--out", default=None, help="write fused scores and a summary here")
    sp.set_defaults(func=cmd_ensemble)

    sp = sub.add_parser("compare", help="per-class and confused-pair differences between two runs")
    sp.add_argument("run_a")
    sp.add_argument("run_b")
    sp.add_argument("--top", type=int, default=10)
    sp.add_argument("--out", default=None,
                    help="write the markdown here (default: RUN_B/compare_<name of RUN_A>.md)")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("summarize", help="mean ± std of finished runs over seeds, one row per setup")
    sp.add_argument("runs", nargs="+")
    sp.set_defaults(func=cmd_summarize)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SkelactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permission denied, ... while reading or writing
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
