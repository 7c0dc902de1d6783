"""Models: where weights come from, the VLM and Wan backends, prompts, metrics, tiny builders, real sizes."""
