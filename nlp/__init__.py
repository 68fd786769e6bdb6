"""Natural-language pipelines: sentiment classification and chat (instruction) tuning."""
