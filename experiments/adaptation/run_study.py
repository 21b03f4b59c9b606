"""The multi-seed adaptation study (study.py): the plan of GPU jobs, one job, or the report.

    python -m experiments.adaptation.run_study plan                    # jobs, their tasks and time estimates
    python -m experiments.adaptation.run_study job s0-0                # one job (at most ~10 min on one H100)
    python -m experiments.adaptation.run_study collect s0-0 --to DIR   # its results, laid out as under out_dir
    python -m experiments.adaptation.run_study all                     # every job in turn (one long session)
    python -m experiments.adaptation.run_study parallel --tasks pretrain,base_ladder --deadline-s 540
                                       # every seed side by side on one GPU, stopping before the deadline
    python -m experiments.adaptation.run_study collect-all --to DIR    # every seed's rows and logs
    python -m experiments.adaptation.run_study data --tasks pretrain   # only the data those tasks read
    python -m experiments.adaptation.run_study report --results outputs/adaptation --out outputs/adaptation/report

--study names the StudyConfig YAML (default experiments/adaptation/study.yaml).
"""

import argparse
import json
import sys

from experiments.adaptation.data import show_progress
from experiments.adaptation.study import (
    RUN_STRIDE,
    StudyConfig,
    check_same_bases,
    collect_all,
    collect_job,
    find_job,
    plan_jobs,
    read_results,
    run_job,
    run_parallel,
    run_tasks,
    write_task_data,
)


def format_plan(study: StudyConfig) -> str:
    jobs = plan_jobs(study)
    lines = ["| job | tasks | estimate (s) | command |", "| --- | --- | --- | --- |"]
    for job in jobs:
        command = f"bash experiments/adaptation/run_study.sh {job.name}"
        lines.append(f"| {job.name} | {', '.join(job.tasks)} | {job.estimate_s:.0f} | `{command}` |")
    total = sum(j.estimate_s for j in jobs)
    lines.append(f"\n{len(jobs)} jobs, {total:.0f} s estimated ({total / 3600:.1f} GPU-hours on one H100)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "action",
        choices=["plan", "job", "collect", "all", "report", "parallel", "lane", "collect-all", "data", "same-bases"],
    )
    parser.add_argument("job", nargs="?", help="job name (job, collect): see plan")
    parser.add_argument("--study", default="experiments/adaptation/study.yaml", help="the study's YAML")
    parser.add_argument("--to", help="collect: directory to copy the job's results into")
    parser.add_argument("--results", nargs="+", default=None, help="report: directories of rows-*.jsonl")
    parser.add_argument("--out", default=None, help="report: directory for report.md, summary.json, plots")
    parser.add_argument(
        "--separate-runs",
        action="store_true",
        help="report: each --results entry is a run of its own (other bases under the same seeds): "
        f"seed s of the k-th entry becomes base k*{RUN_STRIDE}+s; an entry A,B is one run in two directories",
    )
    parser.add_argument("--tasks", default="", help="parallel, lane, data: comma-separated tasks (default: all)")
    parser.add_argument("--seed", type=int, help="lane: the seed")
    parser.add_argument("--lanes-per-seed", type=int, default=1, help="parallel: lanes of a seed whose base exists")
    parser.add_argument("--deadline-s", type=float, help="parallel: start no task that would end after this")
    parser.add_argument("--deadline", type=float, help="lane: the same, as time.time() seconds")
    parser.add_argument("--slowdown", type=float, default=1.0, help="parallel, lane: estimates x this (shared GPU)")
    parser.add_argument("--max-running", type=int, help="parallel: lanes at once (default: all; GPU memory)")
    parser.add_argument("--resamples", type=int, default=2000, help="report: bootstrap resamples")
    args = parser.parse_args()
    study = StudyConfig.load(args.study)
    tasks = [t for t in args.tasks.split(",") if t] or study.tasks()
    show_progress()
    if args.action == "plan":
        sys.stdout.write(format_plan(study) + "\n")
    elif args.action in ("job", "collect"):
        if not args.job:
            parser.error(f"{args.action} needs a job name (see: plan)")
        job = find_job(study, args.job)
        if args.action == "job":
            run_job(study, job)
        else:
            if not args.to:
                parser.error("collect needs --to")
            sys.stdout.write("\n".join(map(str, collect_job(study, job, args.to))) + "\n")
    elif args.action in ("parallel", "lane"):
        if args.action == "lane":
            if args.seed is None:
                parser.error("lane needs --seed")
            run_tasks(study, args.seed, tasks, args.deadline, args.slowdown)
        else:
            done = run_parallel(
                study, args.study, tasks, args.lanes_per_seed, args.deadline_s, args.slowdown,
                max_running=args.max_running,
            )  # fmt: skip
            sys.stdout.write(json.dumps(done) + "\n")
    elif args.action == "data":
        paths = write_task_data(study, tasks)
        sys.stdout.write("\n".join(map(str, paths.values())) + "\n")
    elif args.action == "collect-all":
        if not args.to:
            parser.error("collect-all needs --to")
        sys.stdout.write("\n".join(map(str, collect_all(study, args.to))) + "\n")
    elif args.action == "same-bases":
        results = args.results or [study.out_dir]
        if len(results) < 2:
            parser.error("same-bases needs --results A B ...: the runs whose bases to compare")
        try:
            shared = check_same_bases(results)
        except ValueError as error:
            sys.exit(f"different bases: {error}")
        if not shared:
            sys.exit(f"no seed has a pretraining log in two of {results}: nothing to compare")
        sys.stdout.write(f"same bases: seed(s) {', '.join(map(str, shared))}; pool them with report --results\n")
    elif args.action == "all":
        for job in plan_jobs(study):
            run_job(study, job)
    else:
        from experiments.adaptation.report import write_study_report

        results = args.results or [study.out_dir]
        if args.separate_runs:
            results = [entry.split(",") for entry in results]
        try:
            rows, logs = read_results(results, separate_runs=args.separate_runs)
        except ValueError as error:
            parser.error(str(error))
        if not rows:
            parser.error(f"no rows-*.jsonl under {results}")
        result = write_study_report(
            study, rows, args.out or f"{study.out_dir}/report", resamples=args.resamples, logs=logs
        )
        sys.stdout.write(json.dumps(result["targets"], indent=2) + "\n")


if __name__ == "__main__":
    main()
