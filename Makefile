demo: setup
	julius demo

test: setup
	python -m pytest

setup:
	bash .ci/setup

.PHONY: demo test setup
