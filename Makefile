# Thin wrapper over ./dev (which also works where make is not installed).
.PHONY: run test lint types check bench setup
run:   ; ./dev run
test:  ; ./dev test
lint:  ; ./dev lint
types: ; ./dev types
check: ; ./dev check
bench: ; ./dev bench
setup: ; ./dev setup
