VENV ?= $(or $(JULIUS_VENV),.venv)

demo:
	bash .ci/setup demo
	$(VENV)/bin/julius demo

test:
	bash .ci/setup test
	$(VENV)/bin/python -m pytest

.PHONY: demo test
