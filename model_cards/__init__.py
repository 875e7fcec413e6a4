"""Card templates (Jinja), installed as ``recycled_datasets.model_cards`` (see pyproject.toml)."""
