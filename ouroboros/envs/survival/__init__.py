"""The `survival` environment: an AutonomousLLM object that runs its policy's replies as code on itself."""
