"""The API server: OpenAI-compatible endpoints of one deployment, balanced over its ready runners."""
