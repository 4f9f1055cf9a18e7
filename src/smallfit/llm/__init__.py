"""LLM teachers behind OpenAI-compatible APIs: prompts, answers, the client, the answer store
and ledger, and the labeller that ties them together. Nothing here imports torch."""
