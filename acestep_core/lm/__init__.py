"""The 5 Hz LM planner: Qwen3 language model that writes the song's metadata (CoT) and audio codes."""
