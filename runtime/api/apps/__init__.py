"""The application layer of the API server: a deployment's `app` served beside the OpenAI endpoints."""
