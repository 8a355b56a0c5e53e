"""ml_collections config files: each has `get_config(arg)`."""
