# The two commands of the README. Each (re)creates .venv when missing or stale.
.PHONY: demo test venv
venv:
	@scripts/bootstrap.sh
demo: venv
	.venv/bin/python run_pipeline.py demo
test: venv
	.venv/bin/python -m pytest
