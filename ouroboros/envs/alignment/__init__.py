"""The alignment environment: dialogue, distill, labyrinth prompts, candidates, judges, updates."""
