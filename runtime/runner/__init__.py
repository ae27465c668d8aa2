"""The runner: starts the engine (vLLM, or a deployment's own command), and lists it in Redis while it is healthy."""
