# The two commands of the README. Each (re)creates .venv when missing or stale.
.PHONY: demo test lint venv
venv:
	@scripts/bootstrap.sh
demo: venv
	.venv/bin/python run_pipeline.py demo
lint: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
test: lint
	.venv/bin/python -m pytest
