"""Chat (instruction) fine-tuning of causal language models, loss on assistant tokens only."""
