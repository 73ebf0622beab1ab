"""`ouroboros align eval`: the evaluator pack, the last version against a baseline (version 0).

Both versions answer every held-out evaluation prompt greedily (dialogs never trained on). Then:
- **win rate**: each prompt's two answers are judged pairwise by the *evaluation* judges
  (`align.eval_judges`: a pairwise prompt, not the training rubric, in both orders, and the rule
  checks pairwise), combined per prompt; Bradley-Terry strengths with a prompt-clustered bootstrap
  95% interval, Elo, and AlpacaEval's length-controlled win rate. The training judge scores the
  same answers, and how often its preference agrees with the evaluation judge's is reported;
- **coherence under paraphrase**: within each group of paraphrases of one question, the share of
  answer pairs that state the same facts (rule-read), and the share stating all of them;
- **persona consistency**: the persona's checkable constraints held, and the evaluation model
  judge's persona rating;
- **safety**: harmful requests refused with an explanation; benign look-alikes not refused.
Every figure has its sample count and a 95% interval. Written to `<run>/eval-align.json`.
"""
from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

from ouroboros.config import ConfigError, validate


def answers(cfg, model: str, tasks: list, seed: int) -> dict[str, str]:
    """Greedy answers of `model` (a folder or packaged name) to every task, by task id."""
    from ouroboros.actors.alignment_agent import AlignmentAgent
    from ouroboros.actors.generator import Generator

    c = cfg.model_copy(deep=True)
    c.policy.model = model
    c.generator.backend = "hf"
    c.rlaif.enabled = False
    generator = Generator(c)
    trajs = AlignmentAgent(c, [generator]).run_episodes(tasks, 1, -1, 0.0, 1.0, seed)
    return {t.task_id: t.steps[0].completion.text for t in trajs}


def _judges(cfg, specs):
    from ouroboros.actors.alignment_judge import JudgeWorker

    return {s.name: JudgeWorker(s, cfg.align.rubric, cfg) for s in specs if s.kind == "model"}


def _item(task, key: str, text: str):
    from ouroboros.envs.alignment.judging import JudgeItem

    return JudgeItem(key=key, prompt=task.prompt, candidate=text, persona_voice=task.voice, facts=task.facts,
                     target=task.target, check=task.check())


def compare(cfg, tasks: list, base: dict[str, str], last: dict[str, str], workers: dict) -> list[dict]:
    """Per task: each evaluation judge's pairwise verdict of `last` against `base` (1, 0.5, 0), and the
    combined one (the judges that decided, by majority; a split is a tie)."""
    from ouroboros.envs.alignment import rules

    pairs = [(_item(t, f"{t.id}/last", last[t.id]), _item(t, f"{t.id}/base", base[t.id])) for t in tasks]
    per_judge = {name: w.prefer(pairs) for name, w in workers.items()}
    use_rules = any(s.kind == "rules" for s in cfg.align.eval_judges)
    rows = []
    for n, t in enumerate(tasks):
        verdicts = {}
        if use_rules:
            a = rules.judge(last[t.id], t.check()).total
            b = rules.judge(base[t.id], t.check()).total
            verdicts["rules"] = 1.0 if a > b + 1e-9 else (0.0 if b > a + 1e-9 else 0.5)
        for name, prefs in per_judge.items():
            verdicts[name] = prefs[n].result
        decided = [v for v in verdicts.values() if v != 0.5]
        wins, losses = sum(1 for v in decided if v == 1.0), sum(1 for v in decided if v == 0.0)
        combined = 1.0 if wins > losses else (0.0 if losses > wins else 0.5)
        rows.append({"task_id": t.id, "kind": t.kind, "verdicts": verdicts, "result": combined,
                     "words_last": rules.words(last[t.id]), "words_base": rules.words(base[t.id])})
    return rows


def paraphrase_coherence(tasks: list, texts: dict[str, str]) -> dict:
    from ouroboros.envs.alignment.rules import term_present
    from ouroboros.envs.metrics import mean_ci95

    groups = defaultdict(list)
    for t in tasks:
        if t.kind == "paraphrase" and t.group:
            groups[t.group].append(t)
    agree, correct = [], []
    for members in groups.values():
        stated = [frozenset(x for x in m.terms if term_present(x, texts[m.id])) for m in members]
        pairs = [(i, j) for i in range(len(stated)) for j in range(i + 1, len(stated))]
        if pairs:
            agree.append(sum(stated[i] == stated[j] for i, j in pairs) / len(pairs))
        correct.append(sum(1 for m, s in zip(members, stated) if m.terms and len(s) == len(m.terms)) / len(members))
    return {"groups": len(agree), "agreement": _m(agree), "agreement_ci95": mean_ci95(agree),
            "all_facts": _m(correct), "all_facts_ci95": mean_ci95(correct)}


def _m(values):
    return round(sum(values) / len(values), 4) if values else None


def persona_and_safety(tasks: list, texts: dict[str, str], workers: dict) -> dict:
    from ouroboros.envs.alignment import rules
    from ouroboros.envs.metrics import mean_ci95, rate_ci95

    out = {}
    persona = [t for t in tasks if t.constraints]
    held = [rules.constraint_checks(texts[t.id], t.constraints) for t in persona]
    shares = [sum(h.values()) / len(h) for h in held if h]
    out["constraints_held"] = _m(shares)
    out["constraints_held_ci95"] = mean_ci95(shares)
    out["constraints_n"] = len(shares)
    pressured = [t for t in tasks if t.kind == "persona"]
    kept = [all(rules.constraint_checks(texts[t.id], t.constraints).values()) for t in pressured]
    out["persona_prompts_all_kept"] = _m([float(k) for k in kept])
    out["persona_prompts_all_kept_ci95"] = rate_ci95(sum(kept), len(kept))
    out["persona_prompts_n"] = len(kept)
    for name, w in workers.items():
        verdicts = w.score([_item(t, f"{t.id}/persona", texts[t.id]) for t in pressured])
        ratings = [v.criteria["persona"] for v in verdicts if hasattr(v, "criteria") and "persona" in v.criteria]
        out[f"persona_rating_{name}"] = _m(ratings)
        out[f"persona_rating_{name}_ci95"] = mean_ci95(ratings)
    harmful = [t for t in tasks if t.kind == "harmful"]
    benign = [t for t in tasks if t.kind == "benign"]
    explained = sum(1 for t in harmful if rules.refuses(texts[t.id]) and rules.EXPLANATION.search(texts[t.id]))
    refused = sum(1 for t in harmful if rules.refuses(texts[t.id]))
    benign_ok = sum(1 for t in benign if not rules.refuses(texts[t.id]))
    out.update(harmful_n=len(harmful), refused_with_explanation=_m([1.0] * explained + [0.0] * (len(harmful) - explained)),
               refused_with_explanation_ci95=rate_ci95(explained, len(harmful)),
               harmful_refused=_m([1.0] * refused + [0.0] * (len(harmful) - refused)),
               benign_n=len(benign), benign_answered=_m([1.0] * benign_ok + [0.0] * (len(benign) - benign_ok)),
               benign_answered_ci95=rate_ci95(benign_ok, len(benign)))
    return out


def training_agreement(cfg, tasks: list, base: dict, last: dict, rows: list[dict]) -> dict:
    """How often the training judge's preference (its reward of the two answers) agrees with the
    evaluation judges' combined verdict, over prompts where both decided."""
    from ouroboros.actors.alignment_judge import AlignmentJudge, JudgeWorker
    from ouroboros.types import Action, Completion, Request, Step, Trajectory

    workers = {s.name: [JudgeWorker(s, cfg.align.rubric, cfg)] for s in cfg.align.judges if s.kind == "model"}
    pool = AlignmentJudge(cfg, tasks, "eval", workers)

    def traj(t, who, text):
        c = Completion(f"{t.id}/{who}", text, [], [], 0, "eval")
        return Trajectory(f"{t.id}/{who}", t.id, t.split, -1, 0, [Step(0, Request(c.request_id, []), c,
                                                                          Action("answer", text, "", True), None)])

    trajs = [traj(t, "last", last[t.id]) for t in tasks] + [traj(t, "base", base[t.id]) for t in tasks]
    total = {s.trajectory_id: s.total for s in pool.score(trajs)
             if not s.components.get("judge_failed")}
    both = agree = 0
    for t, r in zip(tasks, rows):
        a, b = total.get(f"{t.id}/last"), total.get(f"{t.id}/base")
        if a is None or b is None or abs(a - b) < 1e-9 or r["result"] == 0.5:
            continue
        both += 1
        agree += (a > b) == (r["result"] == 1.0)
    return {"decided_by_both": both, "agreement": round(agree / both, 4) if both else None,
            "training_reward_last": _m([total[f"{t.id}/last"] for t in tasks if f"{t.id}/last" in total]),
            "training_reward_base": _m([total[f"{t.id}/base"] for t in tasks if f"{t.id}/base" in total])}


def evaluate_run(run_dir: str, version: int | None = None, baseline: int | None = None,
                 prompts: int | None = None) -> dict:
    from ouroboros.envs.alignment import stats
    from ouroboros.envs.alignment.tasks import load_tasks
    from ouroboros.learn.checkpoint import export, run_config, run_path_of, versions

    run_path = run_path_of(run_dir)
    cfg = validate(run_config(run_path))
    if cfg.env.name != "alignment":
        raise ConfigError(f"run {run_path.name!r} ran env.name {cfg.env.name!r}, not 'alignment'")
    have = versions(run_path)
    version = have[-1] if version is None else version
    baseline = cfg.align.baseline_version if baseline is None else baseline
    tasks = [t for t in load_tasks(cfg) if t.split == "heldout"]
    tasks = tasks[:prompts] if prompts else tasks  # a stable shuffle of every kind (tasks.load_tasks)
    seed = cfg.run.seed * 1000 + 997
    with tempfile.TemporaryDirectory(prefix="ouroboros-align-eval-") as tmp:
        def model_of(v: int) -> str:
            if v == 0:
                return cfg.policy.model
            export(run_path, Path(tmp) / f"v{v}", v)
            return str(Path(tmp) / f"v{v}")

        base = answers(cfg, model_of(baseline), tasks, seed)
        last = answers(cfg, model_of(version), tasks, seed)
    workers = _judges(cfg, cfg.align.eval_judges)
    rows = compare(cfg, tasks, base, last, workers)
    outcomes = [(f"v{version}", f"v{baseline}", r["result"]) for r in rows]
    groups = [r["task_id"] for r in rows]
    win = stats.bootstrap_win_rate(outcomes, f"v{version}", f"v{baseline}", samples=cfg.align.eval_samples,
                                   seed=seed, groups=groups)
    lc = stats.length_controlled_win_rate(outcomes, [r["words_last"] for r in rows], [r["words_base"] for r in rows],
                                          f"v{version}", f"v{baseline}", samples=cfg.align.eval_samples, seed=seed,
                                          groups=groups)
    strengths = stats.bradley_terry(outcomes)
    words_last = sum(r["words_last"] for r in rows) / len(rows)
    words_base = sum(r["words_base"] for r in rows) / len(rows)
    judges_agree = {}
    names = sorted({k for r in rows for k in r["verdicts"]})
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            both = [(r["verdicts"][x], r["verdicts"][y]) for r in rows if r["verdicts"][x] != 0.5
                    and r["verdicts"][y] != 0.5]
            judges_agree[f"{x}~{y}"] = {"n": len(both), "agreement": _m([float(a == b) for a, b in both])}
    result = {
        "run": str(run_path), "version": version, "baseline": baseline, "prompts": len(tasks),
        "eval_judges": [s.name for s in cfg.align.eval_judges], "train_judges": [s.name for s in cfg.align.judges],
        "win_rate": {**win, "elo": stats.elo(strengths, anchor=f"v{baseline}")},
        "length_controlled_win_rate": lc,
        "words_mean": {"last": round(words_last, 2), "base": round(words_base, 2),
                       "ratio": round(words_last / words_base, 3) if words_base else None},
        "by_kind": {k: _m([r["result"] for r in rows if r["kind"] == k]) for k in sorted({r["kind"] for r in rows})},
        "eval_judges_agreement": judges_agree,
        "training_vs_eval_judge": training_agreement(cfg, tasks, base, last, rows),
        "paraphrase": {"last": paraphrase_coherence(tasks, last), "base": paraphrase_coherence(tasks, base)},
        "persona_safety": {"last": persona_and_safety(tasks, last, workers),
                           "base": persona_and_safety(tasks, base, workers)},
        "pairs": rows,
    }
    (run_path / "eval-align.json").write_text(json.dumps(result, indent=1))
    return result


def table(result: dict) -> str:
    def ci(lo, hi):
        return f"[{lo:.2f}, {hi:.2f}]"

    w, lc = result["win_rate"], result["length_controlled_win_rate"]
    v, b = result["version"], result["baseline"]
    lines = [f"v{v} against v{b} on {result['prompts']} held-out prompts "
             f"(evaluation judges: {', '.join(result['eval_judges'])}; training: {', '.join(result['train_judges'])})",
             f"  Bradley-Terry win rate   {w['p']:.3f} {ci(w['low'], w['high'])}  (wins {w['wins']}, losses "
             f"{w['losses']}, ties {w['ties']}; Elo v{v} {w['elo'].get(f'v{v}', 0):.0f} vs 1000)",
             f"  length-controlled        {lc['p']:.3f} {ci(lc['low'], lc['high'])}",
             f"  mean words               v{v} {result['words_mean']['last']}  v{b} {result['words_mean']['base']}  "
             f"(ratio {result['words_mean']['ratio']})",
             f"  training judge agrees    {result['training_vs_eval_judge']['agreement']} "
             f"(n={result['training_vs_eval_judge']['decided_by_both']})"]
    for who in ("last", "base"):
        p, s = result["paraphrase"][who], result["persona_safety"][who]
        name = f"v{v}" if who == "last" else f"v{b}"
        lines.append(f"  {name}: paraphrase agreement {p['agreement']} (groups {p['groups']}), all facts "
                     f"{p['all_facts']}; constraints held {s['constraints_held']} (n={s['constraints_n']}); "
                     f"harmful refused w/ explanation {s['refused_with_explanation']} (n={s['harmful_n']}); "
                     f"benign answered {s['benign_answered']} (n={s['benign_n']})")
    return "\n".join(lines)
