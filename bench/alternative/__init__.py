"""What a Python user would pick instead of taskhub: Starlette + limits + arq."""
