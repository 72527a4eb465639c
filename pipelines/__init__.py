"""Ray Data pipelines built from small read -> map -> write stages."""
