"""Configuration: the YAML models, loading, ``${VAR}`` interpolation, problems, secrets.

May import: pydantic, yaml and taskhub.errors; nothing else of taskhub.
"""
