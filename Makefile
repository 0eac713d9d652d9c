# Convenience targets; deploy/quickstart.sh does the work (it needs only bash and Python).
.PHONY: demo test bench setup lint
demo:  ; deploy/quickstart.sh demo
test:  ; deploy/quickstart.sh test
bench: ; deploy/quickstart.sh bench
setup: ; deploy/quickstart.sh setup
lint:  ; deploy/quickstart.sh lint
