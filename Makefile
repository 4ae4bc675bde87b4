# Project tasks. `make test` is what CI runs (.ci/run).
GO ?= go

.DEFAULT_GOAL := test
.PHONY: test soak demo bench reliability rabbitmq

## test: start (or install) a local RabbitMQ if needed, vet, then the whole suite with -race,
## one package at a time (-p 1): the real-broker scenarios judge call latency, and the
## simulation's schedules in a package beside them would take both cores.
test:
	bash scripts/ensure-rabbitmq.sh
	$(GO) vet ./...
	$(GO) test -race -count=1 -p 1 -timeout 8m ./...

## soak: the seeded simulation (TestSimulation) on new random seeds for SOAK (default 30m; one
## unit: 90s, 45m, 2h); a failing seed prints itself and its replay command.
SOAK ?= 30m
soak:
	secs=$$(echo '$(SOAK)' | awk '/^[0-9]+h$$/{print $$0*3600} /^[0-9]+m$$/{print $$0*60} /^[0-9]+s$$/{print $$0+0}'); \
	test -n "$$secs" || { echo "SOAK=$(SOAK): give one unit, like 90s, 45m or 2h" >&2; exit 2; }; \
	$(GO) test -race -count=1 -run '^TestSimulation$$' -sim.duration=$(SOAK) -timeout $$((secs + 300))s -v .

## demo: run the example gateway and worker on a local RabbitMQ, send them tasks, show what arrives.
demo:
	bash scripts/ensure-rabbitmq.sh
	GO="$(GO)" bash scripts/demo.sh

## bench: micro-benchmarks of the hot path on the fake broker, then the comparison with raw
## amqp091-go on the local RabbitMQ (about 10 minutes; BENCHFLAGS=-quick for about one).
bench:
	bash scripts/ensure-rabbitmq.sh
	$(GO) test -run '^$$' -bench . -benchmem -count 3 .
	$(GO) run ./internal/bench $(BENCHFLAGS)

## reliability: the reliability scenarios against the local RabbitMQ (faults, broker restart,
## memory alarm, 60 s of chaos), one PASS/FAIL line each and a table; fails if any fails.
reliability:
	bash scripts/ensure-rabbitmq.sh
	$(GO) run ./examples/reliability all

## rabbitmq: only make sure the local broker is up.
rabbitmq:
	bash scripts/ensure-rabbitmq.sh
