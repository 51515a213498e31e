"""Configuration: the YAML models, loading, ``${VAR}`` interpolation, problems, secrets.

May import: pydantic, yaml and the leaf modules taskhub.errors and taskhub.http.
"""
