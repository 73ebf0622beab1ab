"""The `tasks` environment: write a function, run it against hidden tests."""
from ouroboros.envs.tasks.dataset import load_tasks
from ouroboros.envs.tasks.harness import harness_files, read_outcome
from ouroboros.envs.tasks.prompt import build_messages, reference_reply

__all__ = ["load_tasks", "harness_files", "read_outcome", "build_messages", "reference_reply"]
