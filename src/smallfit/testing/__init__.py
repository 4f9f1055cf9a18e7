"""Real local servers for tests and benchmarks: llama.cpp's OpenAI-compatible server on
SmolLM2, and a proxy that misbehaves on purpose. Not imported by the library itself."""
