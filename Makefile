VENV ?= $(or $(JULIUS_VENV),.venv)

demo:
	bash .ci/setup demo
	$(VENV)/bin/julius demo

test:
	bash .ci/setup test
	$(VENV)/bin/python -m pytest

.PHONY: demo test

# The README's pictures from real recordings: runs the tutorial notebook, records a
# variant, and captures the Recordings sidebar in Chromium (docs/sidebar.png,
# docs/sidebar-diff.png, docs/fraud_graph.svg). Needs `make test`'s set-up (Chromium).
screenshots:
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" jlpm build:lib && PATH="$(abspath $(VENV))/bin:$$PATH" jlpm build:labextension
	$(VENV)/bin/python -m tests.ui.screenshots docs

.PHONY: screenshots
