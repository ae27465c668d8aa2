"""The contracts every component shares: the deployment schema, Redis key names and message shapes, errors."""
