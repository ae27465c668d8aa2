"""Loading an application and describing it (OpenAPI, the docs page); the runtime serves it (runtime/api/apps)."""
