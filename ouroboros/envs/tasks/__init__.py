"""The `tasks` environment: write a function; hidden tests, decided on the host, score it."""
from ouroboros.envs.tasks.dataset import load_tasks
from ouroboros.envs.tasks.prompt import build_messages, reference_reply

__all__ = ["load_tasks", "build_messages", "reference_reply"]
