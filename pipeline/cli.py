"""The `coordinator` command line. Exit codes: 0 ok, 1 a stage failed, 2 bad config or
usage, 3 missing input, 130 interrupted; errors print one line saying why."""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import sys
from pathlib import Path

from data.fasttext_models import hash_split, precision_recall
from pipeline import runner, status, worker
from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.executors import make_executor
from pipeline.registry import all_stages

log = logging.getLogger("coordinator")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="coordinator", description="Small-LM pretraining pipeline: stages in run folders.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a pipeline config (skips stages that are up to date)")
    r.add_argument("config", help="YAML config, e.g. configs/demo.yaml")
    r.add_argument("overrides", nargs="*", help="a.b=value overrides, e.g. executor.workers=4")
    r.add_argument("--run-dir", help="run folder (default: run.dir or runs/<run.name>)")
    r.add_argument("--only", help="run just this stage (its inputs must be done)")
    r.add_argument("--from", dest="from_stage", help="run this stage and the ones after it")
    r.add_argument("--force", action="store_true", help="rerun selected stages even if up to date")
    r.add_argument("--dry-run", action="store_true", help="print the plan (and sbatch scripts) and change nothing")
    r.add_argument("--no-wait", action="store_true", help="SLURM: submit and return without waiting")

    s = sub.add_parser("status", help="per-stage status and stats of a run folder")
    s.add_argument("run_dir")
    s.add_argument("--json", action="store_true")

    st = sub.add_parser("stage", help="run one stage standalone on any file or folder")
    st.add_argument("name", help="stage type, e.g. ingest")
    st.add_argument("overrides", nargs="*", help="stage keys (min_chars=50) or full keys (executor.workers=2)")
    st.add_argument("--input", action="append", required=True, help="file, folder or stage folder (repeatable)")
    st.add_argument("--output", required=True, help="the stage folder to write")
    st.add_argument("--config", help="take executor and stage settings from this YAML")
    st.add_argument("--force", action="store_true")

    sub.add_parser("stages", help="list the stage types and their config keys")

    lid = sub.add_parser("train-lid", help="train a fastText language-ID model from one file per language")
    lid.add_argument("inputs", nargs="+", help="files named by language code (de.txt), one sentence a line, or folders of them")
    lid.add_argument("--output", required=True, help="model path, e.g. models/lid.bin (report beside it)")
    lid.add_argument("--valid-fraction", type=float, default=0.2)
    lid.add_argument("--epochs", type=int, default=25)
    lid.add_argument("--dim", type=int, default=64)
    lid.add_argument("--minn", type=int, default=1)
    lid.add_argument("--maxn", type=int, default=4)
    lid.add_argument("--baseline", default=None, help="model to compare with (default lid.176.ftz)")

    for name, what in (("train-quality", "quality"), ("train-domain", "domain")):
        tq = sub.add_parser(name, help=f"train a fastText {what} classifier from labelled files or folders")
        tq.add_argument("--label", action="append", required=True, metavar="LABEL=PATH[,PATH]",
                        help="examples of one label (any reader format), repeatable"
                        + (": e.g. hq=wiki.txt lq=crawl/" if what == "quality" else ": e.g. math=... code=..."))
        tq.add_argument("--output", required=True)
        tq.add_argument("--text-split", default="paragraph", choices=["file", "paragraph", "line"])
        tq.add_argument("--min-chars", type=int, default=100)
        tq.add_argument("--valid-fraction", type=float, default=0.1)
        tq.add_argument("--epochs", type=int, default=20)

    t = sub.add_parser("task", help="(executors) run one task of a planned stage")
    t.add_argument("stage_dir")
    t.add_argument("step")
    t.add_argument("task", type=int)
    f = sub.add_parser("finalize", help="(executors) merge task stats into a stage's manifest")
    f.add_argument("stage_dir")
    return p


@contextlib.contextmanager
def run_lock(lock_path: Path):
    """One coordinator at a time per run folder (two would write the same files)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(f"{lock_path.parent} is in use by another coordinator ({lock_path})") from None
        yield


def _setup_logging(args) -> None:
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _run(cfg, run_dir: Path, args, stage_names_only=None) -> int:
    plan = runner.build_plan(cfg, run_dir, only=getattr(args, "only", None),
                             from_stage=getattr(args, "from_stage", None), force=args.force)
    executor = make_executor(cfg.top.executor)
    dry = getattr(args, "dry_run", False)
    print(f"run {run_dir} ({executor.kind} executor)" + (" [dry run: nothing will change]" if dry else ""))
    for line in runner.describe(plan):
        print("  " + line)
    if all(ps.action == "skip" for ps in plan):
        print("nothing to do: every stage is up to date")
        return 0
    if executor.kind == "slurm":
        for line in runner.run_slurm(plan, executor, cfg.top.run.name, dry, wait=not args.no_wait if hasattr(args, "no_wait") else True):
            print(line)
        return 0
    if dry:
        return 0
    with run_lock(run_dir / ".lock"):
        runner.run_local(plan, executor)
    return 0


def cmd_run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or cfg.top.run.dir or f"runs/{cfg.top.run.name}")
    if not args.dry_run:
        runner.save_resolved_config(cfg, run_dir)
    code = _run(cfg, run_dir, args)
    if not args.dry_run:
        print(status.table(status.collect(run_dir)))
    return code


def cmd_stage(args) -> int:
    from pipeline.config import load_yaml

    base = load_yaml(args.config) if args.config else {}
    stage_keys = [o if o.split("=", 1)[0].split(".")[0] in ("stages", "executor", "run") else f"stages.{args.name}.{o}"
                  for o in args.overrides]
    output = Path(args.output)
    base.setdefault("run", {"name": "stage"})
    base.setdefault("stages", {})
    section = dict((base["stages"] or {}).get(args.name) or {})
    section["input"] = [str(Path(i).resolve()) for i in args.input]
    base["stages"] = {args.name: section}
    cfg = load_config(None, stage_keys, base=base)
    cfg.where = args.config or "command line"
    stage, fp = runner.build_stage(cfg, args.name, [args.name], {}, output.parent, out_dir=output)
    action, reason, pending = runner.decide(stage, fp, args.force)
    plan = [runner.PlannedStage(args.name, stage, fp, action, reason, pending)]
    executor = make_executor(cfg.top.executor)
    for line in runner.describe(plan):
        print("  " + line)
    if action == "skip":
        print("nothing to do: the output is up to date")
    elif executor.kind == "slurm":
        for line in runner.run_slurm(plan, executor, cfg.top.run.name, False, wait=True):
            print(line)
    else:
        with run_lock(output.parent / f".{output.name}.lock"):
            runner.run_local(plan, executor)
    m = worker.read_manifest(output) or {}
    rows = [{"stage": args.name, "type": m.get("type"), "status": m.get("status"), "fingerprint": m.get("fingerprint"),
             "docs_in": m.get("stats", {}).get("docs_in"), "docs_out": m.get("stats", {}).get("docs_out"),
             "removed": m.get("stats", {}).get("removed", {}), "bytes_in": m.get("stats", {}).get("bytes_in"),
             "bytes_out": m.get("stats", {}).get("bytes_out"), "seconds": m.get("seconds")}]
    print(status.table(rows))
    return 0


def cmd_status(args) -> int:
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise PipelineError(f"no run folder at {run_dir}")
    rows = status.collect(run_dir)
    print(status.to_json(rows) if args.json else status.table(rows))
    return 0


def cmd_stages(args) -> int:
    for name, cls in all_stages().items():
        print(f"{name}: {cls.description}")
        for key, field in cls.Config.model_fields.items():
            default = field.default if field.default_factory is None else field.default_factory()
            print(f"    {key} = {default!r}" + (f"  # {field.description}" if field.description else ""))
    return 0


def cmd_train_lid(args) -> int:
    from data import langid

    files = []
    for p in map(Path, args.inputs):
        if not p.exists():
            raise PipelineError(f"train-lid: input not found: {p}")
        files += sorted(p.glob("*.txt")) if p.is_dir() else [p]
    data = langid.read_labelled_files(files)
    train, valid = hash_split(data, args.valid_fraction)
    model = langid.train_lid(train, Path(args.output), epochs=args.epochs, dim=args.dim, minn=args.minn, maxn=args.maxn)
    gold, texts = [g for g, _ in valid], [t for _, t in valid]
    predicted = langid.LanguageIdentifier(model).predict(texts)[0]
    ours = precision_recall(gold, predicted)
    base_model = langid.LanguageIdentifier(args.baseline)
    covered = {langid.iso639_1(l) for l in base_model.model.get_labels()}
    sel = [i for i, g in enumerate(gold) if g in covered]
    base_pred = base_model.predict([texts[i] for i in sel])[0]
    baseline = precision_recall([gold[i] for i in sel], base_pred)
    ours_covered = precision_recall([gold[i] for i in sel], [predicted[i] for i in sel])
    report = {"model": str(model), "languages": len(data), "train": len(train), "held_out": len(valid),
              "accuracy": ours["accuracy"], "accuracy_on_baseline_languages": ours_covered["accuracy"],
              "baseline": base_model.model_path, "baseline_languages": len({gold[i] for i in sel}),
              "baseline_accuracy": baseline["accuracy"], "per_language": ours["per_language"]}
    from data.jsonl import atomic_write_json

    atomic_write_json(Path(args.output).with_suffix(".report.json"), report)
    print(f"{len(data)} languages, {len(train)} train / {len(valid)} held-out sentences")
    print(f"ours: accuracy {ours['accuracy']:.4f} (on the baseline's {report['baseline_languages']} languages: "
          f"{ours_covered['accuracy']:.4f}); baseline {Path(base_model.model_path).name}: {baseline['accuracy']:.4f}")
    worst = sorted(ours["per_language"].items(), key=lambda kv: kv[1]["recall"])[:5]
    print("weakest recall: " + ", ".join(f"{k} {v['recall']:.2f}" for k, v in worst))
    print(f"model: {model}  report: {Path(args.output).with_suffix('.report.json')}")
    return 0


def cmd_train_classifier(args) -> int:
    from data import classifier
    from data.jsonl import atomic_write_json
    from data.readers import ReadOptions

    labels = {}
    for spec in args.label:
        if "=" not in spec:
            raise ConfigError(f"--label {spec!r}: expected LABEL=PATH[,PATH]")
        label, paths = spec.split("=", 1)
        labels.setdefault(label, []).extend(p for p in paths.split(",") if p)
    try:
        examples = {label: [t for t in classifier.read_examples(paths, ReadOptions(text_split=args.text_split))
                            if len(t) >= args.min_chars] for label, paths in labels.items()}
    except FileNotFoundError as err:
        raise PipelineError(str(err)) from None
    train, valid = hash_split(examples, args.valid_fraction)
    model = classifier.train_classifier(train, Path(args.output), epochs=args.epochs)
    report = classifier.TextClassifier(model).evaluate(valid)
    report["examples"] = {k: len(v) for k, v in examples.items()}
    atomic_write_json(Path(args.output).with_suffix(".report.json"), report)
    print(f"examples: {report['examples']}; held-out accuracy {report['accuracy']:.4f}")
    for label, v in report["per_language"].items():
        print(f"  {label}: precision {v['precision']:.3f} recall {v['recall']:.3f} (n={v['support']})")
    print(f"model: {model}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # overrides may come after options (`run CFG --run-dir D a.b=1`): collect them here
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    _setup_logging(args)
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "status":
            return cmd_status(args)
        if args.command == "stage":
            return cmd_stage(args)
        if args.command == "stages":
            return cmd_stages(args)
        if args.command == "train-lid":
            return cmd_train_lid(args)
        if args.command in ("train-quality", "train-domain"):
            return cmd_train_classifier(args)
        if args.command == "task":
            worker.run_task(args.stage_dir, args.step, args.task)
            return 0
        if args.command == "finalize":
            worker.finalize(args.stage_dir)
            return 0
    except PipelineError as err:
        print(f"coordinator: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("coordinator: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    raise ConfigError(f"unknown command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
