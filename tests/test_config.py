import subprocess
import sys

import pytest

from ouroboros.config import ConfigError, load_config


def test_default_and_smoke_configs_validate():
    assert load_config("configs/default.yaml").policy.model == "smollm2-135m-instruct"
    smoke = load_config("configs/smoke.yaml")
    assert smoke.policy.model == "tiny-smollm2" and smoke.run.rounds == 2


def test_unknown_key_names_the_key_and_the_choices(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("learner:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "learner.lr" in msg and "learning_rate" in msg and "\n" not in msg


def test_bad_value_names_key_value_and_expectation(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("sandbox:\n  timeout_s: soon\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert "sandbox.timeout_s" in msg and "'soon'" in msg and "number" in msg


def test_set_overrides_nested_fields_with_yaml_values():
    cfg = load_config("configs/smoke.yaml", ["learner.beta=0.25", "env.agents=3",
                                             "learner.target_modules=[q_proj]"])
    assert cfg.learner.beta == 0.25 and cfg.env.agents == 3 and cfg.learner.target_modules == ["q_proj"]
    with pytest.raises(ConfigError, match="generator.nonsense"):
        load_config("configs/smoke.yaml", ["generator.nonsense=1"])


@pytest.mark.parametrize("args, needle", [
    (["--set", "learner.lr=0.1"], "unknown config key 'learner.lr'"),
    (["--set", "env.samples_per_task=1"], "env.samples_per_task"),
    ([], None),
])
def test_cli_exits_2_with_one_line_and_no_traceback(args, needle, tmp_path):
    config = "configs/smoke.yaml" if args else str(tmp_path / "missing.yaml")
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", config, "--out", str(tmp_path), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert (needle or "not found") in lines[0]


def test_run_refuses_a_backend_that_cannot_load_weights_before_anything_starts(tmp_path):
    import subprocess
    import sys

    base = [sys.executable, "-m", "ouroboros", "run", "configs/smoke.yaml", "--out", str(tmp_path / "run"),
            "--set", "generator.backend=openai", "--set", "generator.api.model=gpt-test"]
    proc = subprocess.run(base + ["--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "cannot load trained weights" in line and "--rounds 0" in line and "ouroboros experiment" in line
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_credential_named_but_not_set_is_one_clear_line(tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.delenv("OUROBOROS_TEST_UNSET_TOKEN", raising=False)
    proc = subprocess.run([sys.executable, "-m", "ouroboros", "run", "configs/smoke.yaml", "--rounds", "0",
                           "--out", str(tmp_path / "run"),
                           "--set", "sandbox.env_from={SERVICE_TOKEN: OUROBOROS_TEST_UNSET_TOKEN}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert "OUROBOROS_TEST_UNSET_TOKEN" in line and "not set" in line and "export" in line


def test_sandbox_env_refuses_credentials_and_env_from_takes_names_only():
    from ouroboros.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config("configs/smoke.yaml", ["sandbox.env={API_TOKEN: s3cret-literal-value}"])
    assert "env_from" in str(err.value) and "s3cret-literal-value" not in str(err.value)
    with pytest.raises(ConfigError, match="environment variable names"):
        load_config("configs/smoke.yaml", ["sandbox.env_from={TOKEN: 'sk-1234 5678'}"])
    cfg = load_config("configs/smoke.yaml", ["sandbox.env_from={TOKEN: HOST_TOKEN}", "sandbox.env={MODE: fast}"])
    assert cfg.model_dump()["sandbox"]["env_from"] == {"TOKEN": "HOST_TOKEN"}


def test_unknown_keys_list_the_yaml_names_and_run_async_is_read_by_its_yaml_name():
    from ouroboros.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"expected one of: .*time_budget_s, async, out$"):
        load_config("configs/smoke.yaml", ["run.asyn=1"])
    assert load_config("configs/smoke.yaml", ["run.async=true"]).run.async_ is True
    assert load_config("configs/smoke.yaml").model_dump(by_alias=True)["run"]["async"] is False
