"""Policy-gradient learners (GRPO, PPO, REINFORCE) as plain objects on the tiny model, fed real
completions of the hf generator: what they train on, what they refuse, what they store, and
checkpoints a user can export and load."""
import json
import math
import subprocess
import sys

import pytest
import torch

from ouroboros.actors.generator import Generator
from ouroboros.actors.learner import Learner
from ouroboros.config import ConfigError, load_config
from ouroboros.envs.tasks import build_messages, load_tasks
from ouroboros.learn import checkpoint
from ouroboros.types import Request, Turn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sampled(tiny_model_path):
    """Four sampled completions for each of three train tasks, from the hf generator at version 0."""
    cfg = load_config("configs/smoke.yaml")
    gen = Generator(cfg)
    tasks = load_tasks("train")[:3]
    requests = [Request(id=f"{t.id}-{k}", messages=build_messages(t), max_new_tokens=24, temperature=1.0,
                        top_p=1.0, seed=k) for t in tasks for k in range(4)]
    return tasks, requests, gen.generate(requests)


def _turns(sampled, reward=lambda i: float(i % 2), version=0, round_=1):
    tasks, requests, completions = sampled
    out = []
    for i, (r, c) in enumerate(zip(requests, completions)):
        out.append(Turn(id=f"{r.id}#0", trajectory_id=r.id, step=0, round=round_, task_id=r.id.rsplit("-", 1)[0],
                        prompt=r.messages, token_ids=list(c.token_ids), logprobs=list(c.logprobs),
                        weights_version=version, reward=reward(i), episode_reward=reward(i)))
    return out


def _learner(algorithm, *extra):
    cfg = load_config("configs/smoke.yaml", [f"learner.algorithm={algorithm}", "learner.learning_rate=0.01",
                                             "learner.batch_size=4", "learner.epochs=2", *extra])
    return Learner(cfg)


def _sequence_logp(learner, turn):
    from ouroboros.backends.local_model import chat_prompt_ids

    prompt = chat_prompt_ids(learner.tokenizer, turn.prompt)
    ids = torch.tensor([prompt + turn.token_ids])
    with torch.no_grad():
        logits = learner.model(ids).logits[0, len(prompt) - 1:-1]
    return float(torch.log_softmax(logits, -1).gather(-1, torch.tensor(turn.token_ids)[:, None]).sum())


def test_grpo_raises_the_rewarded_samples_and_stores_what_a_viewer_needs(sampled):
    learner = _learner("grpo")
    turns = _turns(sampled)
    before = [_sequence_logp(learner, t) for t in turns]
    metrics, rows = learner.train(turns)
    assert metrics["steps"] == 2 * 3 and metrics["trained"] == 12 and metrics["loss"] is not None
    # One record per optimizer step, for the trackers and learner-steps.parquet.
    assert [s["step"] for s in metrics["per_step"]] == [1, 2, 3, 4, 5, 6]
    assert all(s["grad_norm"] >= 0 and 0 <= s["clip_fraction"] <= 1 and s["learning_rate"] > 0
               for s in metrics["per_step"])
    assert sum(s["loss"] for s in metrics["per_step"]) / 6 == pytest.approx(metrics["loss"], rel=1e-5)
    # Same model, same fp32 weights: the learner's log-probs of the sampled tokens are the
    # generator's (the forward scores exactly the tokens the generator sampled, at the right place).
    assert abs(metrics["generator_learner_kl"]) < 1e-4
    assert len(rows) == 12
    for row, t in zip(sorted(rows, key=lambda r: r["turn_id"]), sorted(turns, key=lambda t: t.id)):
        assert row["turn_id"] == t.id and len(row["learner_logprobs"]) == len(t.token_ids) == len(row["clipped"])
        assert row["tokens"] == [learner.tokenizer.decode([i]) for i in t.token_ids]
        assert row["generator_logprobs"] == pytest.approx(row["learner_logprobs"], abs=1e-3)
        assert 1 <= row["learner_step"] <= 6 and row["staleness"] == 0 and not any(row["masked"])
        assert row["advantage"] > 0 if t.reward == 1.0 else row["advantage"] < 0
    after = [_sequence_logp(learner, t) for t in turns]
    gain = [a - b for a, b in zip(after, before)]
    rewarded = [g for g, t in zip(gain, turns) if t.reward == 1.0]
    unrewarded = [g for g, t in zip(gain, turns) if t.reward == 0.0]
    assert sum(rewarded) / len(rewarded) > sum(unrewarded) / len(unrewarded) + 0.5


def test_nan_rewards_or_logprobs_refuse_the_batch_and_leave_the_policy(sampled):
    learner = _learner("grpo")
    turns = _turns(sampled)
    turns[2].reward = math.nan
    turns[5].logprobs[0] = -math.inf
    weights = [p.detach().clone() for p in learner.model.parameters() if p.requires_grad]
    metrics, rows = learner.train(turns)
    assert metrics["steps"] == 0 and rows == []
    assert metrics["refused_ids"] == [turns[2].id, turns[5].id]
    assert turns[2].id in metrics["refused"] and "NaN or infinite" in metrics["refused"]
    assert all(torch.equal(a, b) for a, b in zip(weights, [p for p in learner.model.parameters() if p.requires_grad]))


def test_staleness_bound_drops_old_samples_and_reports_staleness(sampled):
    learner = _learner("reinforce", "learner.max_staleness=1")
    learner.version = 2  # as if two versions were published since these were sampled
    turns = _turns(sampled, version=0)[:6] + _turns(sampled, version=1)[6:]
    metrics, rows = learner.train(turns)
    assert metrics["stale_dropped"] == 6 and metrics["trained"] == 6
    assert metrics["staleness_max"] == 1 and {r["staleness"] for r in rows} == {1}


def test_ppo_trains_a_value_head_and_reinforce_discounts_multi_turn_returns(sampled):
    learner = _learner("ppo", "learner.kl_coef=0.05", "learner.kl_mode=reward")
    assert learner.value_head is not None
    head = learner.value_head.weight.detach().clone()
    metrics, rows = learner.train(_turns(sampled))
    assert metrics["steps"] > 0 and metrics["value_loss"] is not None and metrics["kl_ref"] is None
    assert not torch.equal(head, learner.value_head.weight)

    # Three turns of one episode: only the last pays; earlier turns get the discounted return.
    r = _learner("reinforce", "learner.gamma=0.5", "learner.baseline=mean")
    turns = _turns(sampled)[:3]
    for k, t in enumerate(turns):
        t.trajectory_id, t.step, t.id = "ep", k, f"ep#{k}"
        t.reward = 1.0 if k == 2 else 0.0
    encoded, stats = r.update.prepare(turns, 0)
    assert [e.ret for e in encoded] == pytest.approx([0.25, 0.5, 1.0])


def test_reward_guard_bounds_and_reports_the_hit_rate(sampled):
    learner = _learner("grpo", "learner.reward_bound=[0,1]")
    turns = _turns(sampled, reward=lambda i: 5.0 if i < 3 else 0.5)
    encoded, stats = learner.update.prepare(turns, 0)
    assert stats["reward_bound_hit_rate"] == pytest.approx(3 / 12)
    assert max(e.reward for e in encoded) == 1.0


@pytest.mark.parametrize("setting,message", [
    (["learner.algorithm=ppo", "learner.critic=none"], "learner.critic .none. with learner.algorithm .ppo."),
    (["learner.max_staleness=-1"], "learner.max_staleness"),
    (["learner.quantize=4bit"], "learner.quantize .4bit.*GPU"),
    (["learner.reward_bound=[1,0]"], "learner.reward_bound.*low < high"),
])
def test_incompatible_learner_settings_are_one_line_naming_the_setting(setting, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/smoke.yaml", setting)


def test_checkpoint_exports_a_model_folder_that_transformers_and_vllm_load(sampled, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ouroboros.actors.recorder import Recorder

    learner = _learner("grpo")
    learner.train(_turns(sampled))
    weights = learner.publish()
    files = learner.checkpoint()
    cfg = learner.cfg
    recorder = Recorder(str(tmp_path / "out"), "run-a", "t", cfg.model_dump(by_alias=True), algorithm="grpo")
    where = recorder.write_checkpoint(weights.version, files)
    assert where.endswith("runs/run-a/checkpoints/v0001")
    state = json.loads((tmp_path / "out/runs/run-a/checkpoints/v0001/version.json").read_text())
    assert state["version"] == 1 and state["step"] == learner.steps
    for name in ("adapter_model.safetensors", "adapter_config.json", "learner_state.pt", "rng_state.pt", "config.json"):
        assert (tmp_path / "out/runs/run-a/checkpoints/v0001" / name).is_file()

    out = tmp_path / "export"
    info = checkpoint.export(tmp_path / "out", out)  # the run directory: its latest run, its latest version
    assert info["version"] == 1
    gen = Generator(cfg)
    gen.load_weights(weights)
    tasks, requests, _ = sampled
    greedy = [Request(id=f"g{i}", messages=r.messages, max_new_tokens=16, temperature=0.0)
              for i, r in enumerate(requests[::4])]
    served = [c.token_ids for c in gen.generate(greedy)]
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    for r, ids in zip(greedy, served):
        prompt = tok.apply_chat_template(r.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        got = model.generate(**prompt, max_new_tokens=16, do_sample=False)[0, prompt["input_ids"].shape[1]:]
        assert got.tolist()[:len(ids)] == ids
    # vLLM loads the same folder and answers the same (its own process: one engine per process here).
    code = (
        "import json, sys, os\n"
        "os.environ['VLLM_ENABLE_V1_MULTIPROCESSING']='0'\n"
        "from vllm import LLM, SamplingParams\n"
        "from transformers import AutoTokenizer\n"
        "path, prompts = sys.argv[1], json.loads(sys.argv[2])\n"
        "tok = AutoTokenizer.from_pretrained(path)\n"
        "llm = LLM(model=path, dtype='float32', max_model_len=1024, enforce_eager=True, kv_cache_memory_bytes=1<<28,"
        " enable_chunked_prefill=False)\n"
        "ids = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=False) for m in prompts]\n"
        "outs = llm.generate([{'prompt_token_ids': i} for i in ids], SamplingParams(temperature=0, max_tokens=16))\n"
        "print('RESULT', json.dumps([list(o.outputs[0].token_ids) for o in outs]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(out), json.dumps([r.messages for r in greedy])],
                          capture_output=True, text=True, timeout=600)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    assert line is not None, proc.stderr[-3000:]
    for got, ids in zip(json.loads(line[7:]), served):
        assert got[:len(ids)] == ids

    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint of version 7"):
        checkpoint.export(tmp_path / "out", tmp_path / "x", version=7)
    with pytest.raises(checkpoint.CheckpointError, match="not an empty folder"):
        checkpoint.export(tmp_path / "out", out)


def test_qlora_on_a_learner_without_a_gpu_is_refused_with_what_to_do(tiny_model_path):
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU")
    cfg = load_config("configs/smoke.yaml", ["learner.quantize=4bit", "learner.num_gpus=1"])
    with pytest.raises(RuntimeError, match="needs a GPU.*learner.quantize: none"):
        Learner(cfg)


def test_multi_turn_episodes_train_every_policy_turn_with_its_discounted_return():
    """An experiment cycle of three turns: each turn becomes a policy turn whose prompt is the
    conversation so far (tool output included, never scored) and whose return is the cycle's
    score discounted back from its last turn."""
    from ouroboros.envs.experiment.environment import ExperimentEnvironment
    from ouroboros.learn.rollouts import policy_turns
    from ouroboros.types import Action, Completion, ExecResult, Score, Step, Trajectory

    cfg = load_config("configs/smoke.yaml", ["env.name=experiment", "learner.algorithm=reinforce",
                                             "learner.gamma=0.9"])
    env = ExperimentEnvironment(cfg)
    steps, messages = [], [{"role": "user", "content": "find the answer"}]
    for k in range(3):
        c = Completion(request_id=f"q{k}", text=f"reply {k}", token_ids=[10 + k, 11 + k], logprobs=[-0.5, -0.7],
                       weights_version=0, backend="hf")
        result = ExecResult(0, f"tool output {k}", "", False, False, 0.1, False)
        steps.append(Step(index=k, request=Request(id=f"q{k}", messages=list(messages)), completion=c,
                          action=Action("run", "print(1)", "", True), result=result))
        messages += [{"role": "assistant", "content": c.text}, {"role": "user", "content": result.stdout}]
    traj = Trajectory(id="cycle", task_id="goal", split="train", round=1, sample=0, steps=steps)
    turns = policy_turns([traj], [Score("cycle", {"answer": 1.0}, 0.8, "experiment")], env)
    assert [t.id for t in turns] == ["cycle#0", "cycle#1", "cycle#2"]
    assert [t.reward for t in turns] == [0.0, 0.0, 0.8]
    assert "tool output 1" in json.dumps(turns[2].prompt) and turns[2].token_ids == [12, 13]
    from ouroboros.learn.policy_gradient import PolicyGradient
    from transformers import AutoTokenizer

    from ouroboros import models

    pg = PolicyGradient(cfg, None, AutoTokenizer.from_pretrained(models.resolve("tiny-smollm2")), "cpu")
    encoded, stats = pg.prepare(turns, 0)
    assert [e.ret for e in encoded] == pytest.approx([0.8 * 0.81, 0.8 * 0.9, 0.8])
    # Only the turn's own sampled tokens are scored; its prompt (tool outputs included) is context.
    assert all(e.n_scored == 2 and e.input_ids[-2:] == e.turn.token_ids for e in encoded)


def test_export_refuses_damaged_or_foreign_checkpoints_with_one_line(sampled, tmp_path):
    from ouroboros.actors.recorder import Recorder

    learner = _learner("grpo")
    learner.train(_turns(sampled))
    weights = learner.publish()
    recorder = Recorder(str(tmp_path / "out"), "run-b", "t", learner.cfg.model_dump(by_alias=True), algorithm="grpo")
    where = recorder.write_checkpoint(weights.version, learner.checkpoint())
    with pytest.raises(checkpoint.CheckpointError, match="neither a run directory"):
        checkpoint.export(tmp_path / "nowhere", tmp_path / "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(checkpoint.CheckpointError, match="not an empty folder"):
        checkpoint.export(tmp_path / "out", tmp_path / "file")
    # A truncated adapter file: a clear refusal naming the version, and nothing half-written kept.
    adapter = next(p for p in __import__("pathlib").Path(where).iterdir() if p.name.startswith("adapter_model"))
    adapter.write_bytes(adapter.read_bytes()[:100])
    with pytest.raises(checkpoint.CheckpointError, match="v0001.*cannot be loaded"):
        checkpoint.export(tmp_path / "out", tmp_path / "y")
    (__import__("pathlib").Path(where) / "config.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="damaged"):
        checkpoint.export(tmp_path / "out", tmp_path / "z")


def test_turns_past_max_length_are_masked_or_left_out_and_counted(sampled):
    from ouroboros.backends.local_model import chat_prompt_ids

    turns = _turns(sampled)
    learner = _learner("grpo")
    prompt_len = max(len(chat_prompt_ids(learner.tokenizer, t.prompt)) for t in turns)
    learner = _learner("grpo", f"learner.max_length={prompt_len + 5}")
    turns[0].prompt = [{"role": "user", "content": "word " * 400}]  # longer than max_length by itself
    metrics, rows = learner.train(turns)
    assert metrics["too_long"] == 1 and metrics["trained"] == 11
    by_id = {r["turn_id"]: r for r in rows}
    for t in turns[1:]:
        row = by_id[t.id]
        fits = prompt_len + 5 - len(chat_prompt_ids(learner.tokenizer, t.prompt))
        assert row["masked"] == [False] * min(fits, len(t.token_ids)) + [True] * max(0, len(t.token_ids) - fits)
        assert len(row["learner_logprobs"]) == len(row["clipped"]) == min(fits, len(t.token_ids))
    assert metrics["truncated"] >= 1
